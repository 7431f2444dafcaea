"""Silero VAD in live endpointing: per-mel-frame speech probabilities that follow Silero's offline
output whatever the pieces, and utterances that end in loud noise (which the energy detector
hears as voice)."""

from importlib.util import find_spec

import numpy as np
import pytest
import torch

from operators.asr.endpointing import DEFAULT_ENDPOINTING, EndpointRule
from operators.asr.frontend import MelConfig
from operators.asr.live_frontend import IncrementalFrontEnd
from operators.asr.live_vad import LiveSpeechDetector
from operators.asr.silero_vad import WINDOW, load_silero_vad
from tests.live_speech import needs_espeak, noise, speak

torch.set_num_threads(1)
if find_spec("silero_vad") is None:
    pytest.skip("silero-vad is not installed (pip install --no-deps silero-vad==6.2.3)", allow_module_level=True)


@pytest.fixture(scope="module")
def vad():
    return load_silero_vad()


def _scores(front, detector, audio, cuts):
    """Every mel frame's voice score, the audio pushed in pieces cut at ``cuts``, then ended."""
    state = {**front.init_state(), **detector.init_state()}
    pieces = [*np.split(audio, cuts), np.zeros(0, np.float32)]
    for k, piece in enumerate(pieces):
        before = int(state["frames"])
        (state,) = front.push([state], [piece], k == len(pieces) - 1)
        (state,) = detector.push([state], [piece], [before])
    return state


def test_speech_scores_follow_silero_offline_whatever_the_pieces(vad):
    mel = MelConfig()
    front = IncrementalFrontEnd(mel)
    detector = LiveSpeechDetector(vad, mel.hop_length, mel.win_length // 2)
    rng = np.random.default_rng(3)
    audio = np.concatenate([noise(7000, 1), 0.3 * np.sin(np.arange(9000) * 0.07).astype(np.float32) * rng.uniform(
        0.2, 1.0, 9000).astype(np.float32), noise(6100, 2)])
    probs = vad(torch.from_numpy(audio)[None])[0].numpy()  # offline, whole windows
    whole = _scores(front, detector, audio, [])
    frames = int(whole["frames"])
    window = np.minimum((np.arange(frames) * mel.hop_length + mel.win_length // 2) // WINDOW - 1, len(probs) - 1)
    want = np.where(window >= 0, probs[np.maximum(window, 0)], 0.0)
    np.testing.assert_allclose(whole["voice"], want, atol=1e-6)
    assert int(whole["vad/windows"]) == len(audio) // WINDOW and len(whole["vad/probs"]) <= 2
    for trial in range(3):
        cuts = np.sort(rng.choice(np.arange(1, len(audio)), 25, replace=False))
        stepped = _scores(front, detector, audio, cuts)
        np.testing.assert_allclose(stepped["voice"], whole["voice"], atol=1e-6)


def test_streams_stepped_together_score_as_alone(vad):
    mel = MelConfig()
    front = IncrementalFrontEnd(mel)
    detector = LiveSpeechDetector(vad, mel.hop_length, mel.win_length // 2)
    audio = [noise(12000, 5, 0.05), 0.2 * np.sin(np.arange(9000) * 0.05).astype(np.float32), noise(500, 6)]
    together = [{**front.init_state(), **detector.init_state()} for _ in audio]
    before = [0] * len(audio)
    together = detector.push(front.push(together, audio, True), audio, before)
    for x, state in zip(audio, together):
        alone = _scores(front, detector, x, [])
        np.testing.assert_allclose(state["voice"], alone["voice"], atol=1e-5)
    assert not together[2]["voice"].any()  # shorter than a window: no voice


@needs_espeak
def test_silero_ends_an_utterance_in_loud_noise_that_keeps_the_energy_detector_open():
    """Speech, 1.5 s of noise at -34 dBFS (voice to the energy detector, not speech to Silero),
    speech: with Silero the noise ends the first utterance; with energy it never does."""
    from operators.asr.stream_engine import load_live_asr

    first, second = speak("one two three"), speak("stop")
    audio = np.concatenate([noise(8000, 1), first, noise(24000, 2, 0.02), second, noise(32000, 3)])
    finals = {}
    for detector in ("energy", "silero"):
        engine = load_live_asr(endpointing=DEFAULT_ENDPOINTING._replace(rule2=EndpointRule(True, 0.8, 0.0),
                                                                        vad=detector))
        state, out = engine.init_state(), []
        for piece in np.split(audio, np.arange(2560, len(audio), 2560)):
            events, (state,) = engine.step([piece], [state])
            out += events[0]
        out += engine.finalize(state)
        finals[detector] = [o for o in out if o.get("event") == "final"]
    assert [f["text"] for f in finals["silero"]] == ["one two three", "stop"]
    speech_end = (8000 + len(first)) / 16000
    assert speech_end < finals["silero"][0]["end_s"] < speech_end + 1.0  # inside the noise
    assert len(finals["energy"]) == 1 and finals["energy"][0]["text"].startswith("one two three")
    assert finals["energy"][0]["text"].endswith("stop")


def test_live_asr_flags_check_the_detector_before_the_job(tmp_path):
    from pipelines.common import ConfigError
    from pipelines.live_asr import run

    with pytest.raises(ConfigError, match="--vad-model .* does not exist"):
        run(["--vad", "silero", "--vad-model", str(tmp_path / "missing.jit")])
    bad = tmp_path / "bad.jit"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="is not Silero VAD's 16 kHz model.*--vad energy"):
        run(["--vad", "silero", "--vad-model", str(bad)])
    with pytest.raises(ConfigError, match="--speech-threshold"):
        run(["--vad", "silero", "--speech-threshold", "1.5"])


@needs_espeak
def test_live_asr_job_with_silero_ends_utterances_in_noise(tmp_path):
    """The whole job (``--tail`` replay, FnApiRunner, stream state in Beam state) with ``--vad silero``."""
    import json

    from pipelines import live_asr
    from pipelines.tools import send
    from tests.live_speech import write_wav

    audio = np.concatenate([noise(8000, 1), speak("one two three"), noise(24000, 2, 0.02), speak("stop"),
                            noise(32000, 3)])
    write_wav(tmp_path / "talk.wav", audio)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    send.run([str(tmp_path / "talk.wav"), "--stream-id", "talk", "--chunk-seconds", "0.16",
              "--record", str(recordings / "talk.mbl")])
    events = tmp_path / "events.jsonl"
    live_asr.run(["--tail", str(recordings), "--output", str(events), "--vad", "silero", "--endpoint-silence", "0.8",
                  "--max-idle-seconds", "1", "--idle-timeout", "1"])
    finals = [e for e in map(json.loads, events.read_text().splitlines()) if e["event"] == "final" and "utterance" in e]
    assert [f["text"] for f in finals] == ["one two three", "stop"]
