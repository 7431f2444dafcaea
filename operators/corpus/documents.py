"""One training document per sample, keeping every member: captions, images, video and its sound.

:class:`DocumentBuilder` tokenizes each part of a sample with its modality's tokenizer, orders
the parts with a template (``operators.corpus.templates``) and lays them out in the global
vocabulary (``operators.corpus.vocabulary``). Routing follows what a member really holds: a
video member gives a ``video`` part and, when it has a sound track and an audio tokenizer is
in use, an ``audio`` part of the same clip (:func:`clip_audio_tokenizer`) decoded from the same
payload through the same ffmpeg path, budgets and format whitelist as any audio member; an
audio-only MP4 gives an ``audio`` part (the whole track, as any audio member).

:class:`DocumentDecoder` turns a document back into its parts: text strings, and for media the
file a standard decoder reads (JPEG, H.264 Annex-B, Ogg Opus) or the tokenizer's decode.
"""

import copy
import hashlib
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from operators.corpus.filters import DocumentFilters
from operators.corpus.routing import captions, media_members
from operators.corpus.templates import NotKept, Template, auto_template
from operators.corpus.vocabulary import Vocabulary
from operators.media.probe import probe
from operators.tokenizers.base import MissingStream, Tokenizer

PRIMARY_ORDER = ("video", "image", "audio")


class Part(NamedTuple):
    """One part of a document in its tokenizer's own ids.

    Attributes:
        kind: ``text``, ``image``, ``video`` or ``audio``.
        member: Where it came from: the member's extension (``jpg``, ``mp4``), for a JSON
            caption ``json.caption``.
        tokens: The tokenizer's tokens (``[T]`` or ``[T, C]``).
        meta: The tokenizer's measurements (``duration_s``, ``width``, ``height`` ...).
    """

    kind: str
    member: str
    tokens: np.ndarray
    meta: Dict[str, Any]


class Document(NamedTuple):
    """A sample as one token sequence of the global vocabulary, and what it holds.

    Attributes:
        tokens: int32 ids ``bos, (<kind> ... </kind>)*, eos``.
        template: Name of the template that ordered the parts.
        modality: The first of video, image, audio among the parts, else ``text``.
        parts: ``kind:member`` of each part, in document order.
        part_tokens: Ids of each part, its two markers included.
        duration_s: Duration of the first timed part (video, else audio), if any.
        width: Source width of the first image or video part, if known.
        height: Source height of the first image or video part, if known.
        source_bytes: Bytes of the members the document uses.
        media_sha1: SHA-1 over the media payloads (sorted by extension); over the texts for a
            text-only document. Equal for exact duplicates.
    """

    tokens: np.ndarray
    template: str
    modality: str
    parts: Tuple[str, ...]
    part_tokens: Tuple[int, ...]
    duration_s: Optional[float]
    width: Optional[int]
    height: Optional[int]
    source_bytes: int
    media_sha1: str


def _first(parts: List[Part], kinds: Tuple[str, ...], field: str) -> Optional[Any]:
    for kind in kinds:
        for part in parts:
            if part.kind == kind and part.meta.get(field) is not None:
                return part.meta[field]
    return None


def clip_audio_tokenizer(audio: Optional[Tokenizer], video: Optional[Tokenizer]) -> Optional[Tokenizer]:
    """The audio tokenizer for a video's sound track: limited to the seconds the video tokenizer
    takes (``video.seconds``, e.g. AVC-LM's first 5 s) so a video's audio and video parts cover
    the same clip, and a long video is clipped rather than refused by the media budget. An
    audio tokenizer without ``max_seconds``, or a video tokenizer without ``seconds``, is used as is.
    """
    seconds = getattr(video, "seconds", None)
    if audio is None or seconds is None or not hasattr(audio, "max_seconds"):
        return audio
    clipped = copy.copy(audio)  # shares the loaded model; only the clip length differs
    clipped.max_seconds = min(seconds, audio.max_seconds or seconds)
    return clipped


class DocumentBuilder:
    """Samples' members → :class:`Document`.

    Args:
        vocabulary: The global vocabulary (its ranges match the tokenizers given here).
        tokenizers: Modality → media tokenizer (those not given are not in use).
        text_tokenizer: ``operators.corpus.text_tokens`` tokenizer for captions.
        template: The template for every sample; None picks one per modality mix.
        filters: Thresholds a document must pass to be kept (None: keep every document).
    """

    def __init__(self, vocabulary: Vocabulary, tokenizers: Mapping[str, Tokenizer], text_tokenizer: Any,
                 template: Optional[Template] = None, filters: Optional[DocumentFilters] = None):
        self.vocabulary = vocabulary
        self.tokenizers = dict(tokenizers)
        self.text_tokenizer = text_tokenizer
        self.template = template
        self.filters = filters
        self.video_audio = clip_audio_tokenizer(self.tokenizers.get("audio"), self.tokenizers.get("video"))

    def _tokenizer(self, modality: str) -> Tokenizer:
        if modality not in self.tokenizers:
            raise NotKept(f"no {modality} tokenizer in use")
        return self.tokenizers[modality]

    def _video_parts(self, member: str, payload: bytes) -> List[Part]:
        audio = self.video_audio
        if "video" not in self.tokenizers and audio is not None and not probe(payload)["has_video"]:
            sound = audio.encode(payload)  # an audio-only container: an audio part, no video tokenizer needed
            return [Part("audio", member, sound.tokens, sound.meta)]
        video = self._tokenizer("video")
        try:
            out = video.encode(payload)
        except MissingStream as err:
            if not err.has_audio:
                raise
            if audio is None:
                raise NotKept("audio-only video member and no audio tokenizer in use") from err
            sound = audio.encode(payload)
            return [Part("audio", member, sound.tokens, sound.meta)]
        parts = [Part("video", member, out.tokens, out.meta)]
        if out.meta.get("has_audio") and audio is not None:
            sound = audio.encode(payload)
            parts.append(Part("audio", member, sound.tokens, sound.meta))
        return parts

    def parts(self, members: Dict[str, bytes]) -> List[Part]:
        """Every part of a sample, tokenized: captions first, then media by extension.

        Raises:
            NotKept: A media member of a modality with no tokenizer in use.
            MediaError: A member that cannot be tokenized (the sample is a dead letter).
            ValueError: Nothing to tokenize.
        """
        parts = [Part("text", c.where, self.text_tokenizer.encode(c.text), {"chars": len(c.text), "member": c.member})
                 for c in captions(members)]
        for media in media_members(members):
            if media.modality == "video":
                parts += self._video_parts(media.member, media.payload)
            else:
                out = self._tokenizer(media.modality).encode(media.payload)
                parts.append(Part(media.modality, media.member, out.tokens, out.meta))
        if not parts:
            raise ValueError(f"nothing to tokenize: no media or caption among members {sorted(members)}")
        return parts

    def build(self, members: Dict[str, bytes]) -> Document:
        """The sample's document (see :meth:`parts` for the errors; ``NotKept`` also when a
        filter or the template's ``required`` leaves it out)."""
        parts = self.parts(members)
        template = self.template or auto_template([p.kind for p in parts])
        ordered = template.arrange(parts)
        if not ordered:
            raise NotKept(f"template {template.name}: no part of {list(template.parts)}")
        duration_s = _first(ordered, ("video", "audio"), "duration_s")
        width, height = _first(ordered, ("image", "video"), "width"), _first(ordered, ("image", "video"), "height")
        if self.filters is not None:
            levels = [p.meta["rms_dbfs"] for p in ordered if p.kind == "audio" and "rms_dbfs" in p.meta]
            reason = self.filters.reason(duration_s, width, height, min(levels) if levels else None,
                                         sum(p.meta["chars"] for p in ordered if p.kind == "text"))
            if reason is not None:
                raise NotKept(reason)
        encoded = [(p.kind, self.vocabulary.range_for(p.kind).to_global(p.tokens)) for p in ordered]
        used = {p.meta.get("member", p.member) for p in ordered}
        media = sorted({p.member for p in ordered if p.kind != "text"})
        digest = hashlib.sha1()
        for ext in media:
            digest.update(members[ext])
        if not media:
            for p in ordered:
                digest.update(p.tokens.astype("<i4").tobytes())
        return Document(
            tokens=self.vocabulary.wrap(encoded),
            template=template.name,
            modality=next((k for k in PRIMARY_ORDER if any(p.kind == k for p in ordered)), "text"),
            parts=tuple(f"{p.kind}:{p.member}" for p in ordered),
            part_tokens=tuple(int(ids.size) + 2 for _, ids in encoded),
            duration_s=duration_s,
            width=width,
            height=height,
            source_bytes=sum(len(members[m]) for m in used),
            media_sha1=digest.hexdigest(),
        )


class DocumentDecoder:
    """A document's ids → its parts, and each part → what it holds.

    Args:
        vocabulary: The corpus vocabulary (``Vocabulary.from_json`` of ``__vocab.json``).
        tokenizers: Modality → the media tokenizer named in the vocabulary (same version).
        text_tokenizer: The text tokenizer named in the vocabulary.
    """

    def __init__(self, vocabulary: Vocabulary, tokenizers: Mapping[str, Tokenizer], text_tokenizer: Any):
        self.vocabulary = vocabulary
        self.tokenizers = dict(tokenizers)
        self.text_tokenizer = text_tokenizer

    def parts(self, ids: np.ndarray) -> List[Tuple[str, np.ndarray]]:
        """``[(kind, tokenizer tokens)]`` (raises ``MalformedDocument`` on bad ids)."""
        return self.vocabulary.split(ids)

    def content(self, kind: str, tokens: np.ndarray) -> Any:
        """A part's content: ``str`` for text; for media the file a byte-framed tokenizer's
        tokens hold (JPEG, H.264 Annex-B, Ogg Opus bytes), else the tokenizer's ``decode``."""
        if kind == "text":
            return self.text_tokenizer.decode(tokens)
        tokenizer = self.tokenizers[kind]
        to_file = getattr(tokenizer, "to_file", None)
        return to_file(tokens) if to_file is not None else tokenizer.decode(tokens)

    def decode(self, ids: np.ndarray) -> List[Tuple[str, Any]]:
        """``[(kind, content)]`` of a whole document."""
        return [(kind, self.content(kind, tokens)) for kind, tokens in self.parts(ids)]
