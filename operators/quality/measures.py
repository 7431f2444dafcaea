"""Every quality figure of one round trip, by modality, in one place.

Images and video frames: PSNR and SSIM; given an image or clip classifier, the top-1 agreement of
its decisions on the original and the decoded media (machine-perceptual quality). Audio:
wide-band PESQ (16 kHz only), STOI, log-mel distance and, given a speech recogniser,
machine-perceptual agreement: the word error rate of the transcript of the decoded audio against
the transcript of the original (a lossy tokenizer that keeps what ASR hears scores 0). With a human reference transcript the recogniser's own WER
on the original is measured too, so a user sees how far to trust the agreement figure.
"""

import hashlib
from typing import Callable, Dict, Optional

import numpy as np

from operators.quality.audio import PESQ_WB_RATE, mel_distance_db, pesq_wb, stoi
from operators.quality.image import frames_psnr, frames_ssim, psnr, ssim
from operators.quality.round_trip import RoundTrip
from operators.quality.text import word_errors

Transcribe = Callable[[np.ndarray], str]
"""A speech recogniser: 16 kHz mono float32 waveform → transcript."""
ClassifyClip = Callable[[np.ndarray], np.ndarray]
"""A video classifier: clip ``[N, H, W, 3]`` uint8 → class scores ``[K]``."""
ClassifyImage = Callable[[np.ndarray], np.ndarray]
"""An image classifier: ``[H, W, 3]`` uint8 → class scores ``[K]``."""

MEASURES: Dict[str, tuple] = {
    "image": ("psnr_db", "ssim", "cnn_top1_agree"),
    "video": ("psnr_db", "ssim", "x3d_top1_agree"),
    "audio": ("pesq_wb", "stoi", "mel_distance_db", "asr_wer"),
}
"""The quality measures of each modality (``asr_wer``, ``cnn_top1_agree`` and ``x3d_top1_agree``
only with their model)."""

HIGHER_IS_BETTER = {"psnr_db": True, "ssim": True, "pesq_wb": True, "stoi": True,
                    "mel_distance_db": False, "asr_wer": False, "reference_wer": False,
                    "x3d_top1_agree": True, "cnn_top1_agree": True}


class Measurer:
    """Measures round trips; transcribes each distinct reference waveform once.

    Args:
        transcribe: Speech recogniser for the ASR measures (None: no ASR measures).
        classify_clip: Video classifier for ``x3d_top1_agree`` (None: no such measure).
        classify_image: Image classifier for ``cnn_top1_agree`` (None: no such measure).
    """

    def __init__(self, transcribe: Optional[Transcribe] = None, classify_clip: Optional[ClassifyClip] = None,
                 classify_image: Optional[ClassifyImage] = None):
        self._transcribe = transcribe
        self._classify_clip = classify_clip
        self._classify_image = classify_image
        self._reference_texts: Dict[str, str] = {}

    def _reference_text(self, wave: np.ndarray) -> str:
        digest = hashlib.sha1(np.ascontiguousarray(wave, np.float32).tobytes()).hexdigest()
        if digest not in self._reference_texts:
            if len(self._reference_texts) > 64:  # one sample's settings share references; keep it small
                self._reference_texts.clear()
            self._reference_texts[digest] = self._transcribe(wave)
        return self._reference_texts[digest]

    def measure(self, modality: str, trip: RoundTrip, human_text: Optional[str] = None) -> Dict[str, object]:
        """The figures of one round trip: the :data:`MEASURES` of ``modality`` and, for audio
        with a recogniser, the transcripts and word-error counts behind the WERs.

        Args:
            human_text: A person's transcript of the original (audio only), for ``reference_wer``.
        """
        if modality == "image":
            out = {"psnr_db": psnr(trip.reference, trip.decoded), "ssim": ssim(trip.reference, trip.decoded)}
            if self._classify_image is not None:
                same = np.argmax(self._classify_image(trip.reference)) == np.argmax(self._classify_image(trip.decoded))
                out["cnn_top1_agree"] = float(same)
            return out
        if modality == "video":
            reference, decoded = trip.reference, trip.decoded
            out = {"psnr_db": frames_psnr(reference, decoded), "ssim": frames_ssim(reference, decoded)}
            n = min(len(reference), len(decoded))
            if self._classify_clip is not None and n:
                same = np.argmax(self._classify_clip(reference[:n])) == np.argmax(self._classify_clip(decoded[:n]))
                out["x3d_top1_agree"] = float(same)
            return out
        if modality != "audio":
            raise ValueError(f"no quality measures for modality {modality!r}")
        rate = int(trip.sample_rate or 0)
        out: Dict[str, object] = {
            "pesq_wb": pesq_wb(trip.reference, trip.decoded) if rate == PESQ_WB_RATE else None,
            "stoi": stoi(trip.reference, trip.decoded, rate),
            "mel_distance_db": mel_distance_db(trip.reference, trip.decoded, rate),
        }
        if self._transcribe is not None and rate == PESQ_WB_RATE:
            original = self._reference_text(trip.reference)
            decoded = self._transcribe(np.asarray(trip.decoded, np.float32))
            errors = word_errors(original, decoded)
            out.update(asr_text_original=original, asr_text_decoded=decoded, asr_wer=errors.wer,
                       asr_word_errors=errors.errors, asr_reference_words=errors.reference_words)
            if human_text is not None:
                human = word_errors(human_text, original)
                out.update(reference_text=human_text, reference_wer=human.wer,
                           reference_word_errors=human.errors, reference_words=human.reference_words)
        return out
