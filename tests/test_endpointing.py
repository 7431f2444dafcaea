"""Utterance endpointing: the pure rules (stepped == offline), and live ASR finals per utterance
equal to offline transcription of each utterance, whatever the piece sizes."""

import numpy as np
import pytest
import torch

from operators.asr.endpointing import DEFAULT_ENDPOINTING, EndpointConfig, Endpointer, EndpointRule, voiced_frames
from tests.live_speech import PHRASES, conversation, needs_espeak, pcm16

torch.set_num_threads(1)
FRAME_S = 0.08


def _ends_per_frame(flags, config=DEFAULT_ENDPOINTING):
    """Reference: the rules evaluated directly on every prefix of each utterance."""
    ends, start = [], 0
    for t in range(len(flags)):
        utt = flags[start : t + 1]
        trailing = len(utt) - (np.flatnonzero(~utt)[-1] + 1 if (~utt).any() else 0)
        length, tail = len(utt) * FRAME_S, trailing * FRAME_S
        for rule in config.rules:
            if ((len(utt) > trailing or not rule.must_contain_nonsilence) and tail + 1e-9 >= rule.min_trailing_silence
                    and length + 1e-9 >= rule.min_utterance_length):
                ends.append(t)
                start = t + 1
                break
    return ends


@pytest.mark.parametrize("seed", range(4))
def test_endpointer_fed_in_pieces_equals_whole_and_the_rules(seed):
    rng = np.random.default_rng(seed)
    runs = [(bool(rng.integers(2)), int(rng.integers(1, 40))) for _ in range(60)]
    flags = np.concatenate([np.full(n, silent) for silent, n in runs])
    whole = Endpointer(DEFAULT_ENDPOINTING, FRAME_S).feed(flags)
    assert whole == _ends_per_frame(flags) and whole
    cuts = np.sort(rng.choice(np.arange(1, len(flags)), 30, replace=False))
    stepped = Endpointer(DEFAULT_ENDPOINTING, FRAME_S)
    ends = []
    for piece in np.split(flags, cuts):
        state = stepped.state  # a new object per piece, as the live state is stored between steps
        stepped = Endpointer(DEFAULT_ENDPOINTING, FRAME_S, state)
        ends += stepped.feed(piece)
    assert ends == whole


def test_rule_defaults_are_sherpa_onnx_ones():
    speech_then_silence = np.array([False] * 5 + [True] * 40)
    # rule 2: 1.2 s of trailing silence after speech → frame 5 + 15 - 1
    assert Endpointer(DEFAULT_ENDPOINTING, FRAME_S).feed(speech_then_silence)[0] == 19
    # rule 1: 2.4 s of silence with nothing said
    assert Endpointer(DEFAULT_ENDPOINTING, FRAME_S).feed(np.ones(40, bool)) == [29]
    # rule 3: 20 s of speech ends the utterance
    assert Endpointer(DEFAULT_ENDPOINTING, FRAME_S).feed(np.zeros(300, bool)) == [249]
    never = EndpointConfig(*(EndpointRule(True, 99.0, 0.0),) * 3)
    assert Endpointer(never, FRAME_S).feed(speech_then_silence) == []


def test_voiced_frames_maps_analysis_frames_onto_encoder_frames():
    energy = np.array([-90.0] * 8 + [-20.0] + [-90.0] * 7 + [-90.0] * 8)
    assert voiced_frames(energy, 3, -45.0).tolist() == [False, True, False]
    assert voiced_frames(energy[:17], 3, -45.0).tolist() == [False, True, False]


@pytest.fixture(scope="module")
def embedded():
    from operators.asr.stream_engine import LiveASR, load_live_asr

    return LiveASR(load_live_asr().asr, DEFAULT_ENDPOINTING)


def _run(engine, audio, cuts):
    state, out = engine.init_state(), []
    for piece in np.split(audio, cuts):
        outputs, (state,) = engine.step([piece], [state])
        out += outputs[0]
    return out + engine.finalize(state)


@needs_espeak
def test_live_finals_per_utterance_equal_offline_for_any_pieces(embedded):
    audio, phrases = conversation(PHRASES[:4], seed=1)
    audio = pcm16(audio[: -16000]).astype(np.float32) / 32768.0  # the last pause is cut short: ends at eos
    rng = np.random.default_rng(0)
    whole = _run(embedded, audio, [])
    finals = [o for o in whole if o.get("event") == "final"]
    assert [f["text"] for f in finals] == phrases
    assert [f["reason"] for f in finals] == ["endpoint"] * 3 + ["eos"] and [f["utterance"] for f in finals] == [0, 1, 2, 3]
    # Offline transcription of each utterance (the audio between its endpoints) gives its final.
    segments = [audio[round(f["start_s"] * 16000) : round(f["end_s"] * 16000)] for f in finals]
    assert embedded.asr.transcribe(segments) == phrases
    # The utterance's partial deltas add up to its final.
    partials = "".join(o["text"] if o.get("event") != "final" else "|" for o in whole).split("|")
    assert [p.strip() for p in partials[:-1]] == phrases
    for trial in range(2):
        cuts = np.sort(rng.choice(np.arange(1, len(audio)), 40, replace=False))
        stepped = _run(embedded, audio, cuts)
        assert [o for o in stepped if o.get("event") == "final"] == finals


def test_endpointing_needs_the_ctc_head():
    from operators.asr.stream_engine import LiveASR, random_live_asr

    asr = random_live_asr().asr
    asr.decoder = "rnnt"
    with pytest.raises(ValueError, match="CTC decoder"):
        LiveASR(asr, DEFAULT_ENDPOINTING)


def test_unknown_voice_detector_is_refused():
    from operators.asr.stream_engine import LiveASR, random_live_asr

    with pytest.raises(ValueError, match="'energy' or 'silero'"):
        LiveASR(random_live_asr().asr, DEFAULT_ENDPOINTING._replace(vad="webrtc"))


def test_send_assembles_the_transcript_from_utterance_finals():
    from pipelines.tools.send import assemble_transcript

    events = [{"event": "partial", "text": "one two"}, {"event": "partial", "text": " three"},
              {"event": "final", "utterance": 0, "text": "one two three", "reason": "endpoint"},
              {"event": "partial", "text": "stop"}, {"event": "final", "reason": "eos"}]
    assert assemble_transcript(events) == "one two three stop"
    no_endpointing = [{"event": "partial", "text": t} for t in ("one two", " three", " stop")]
    assert assemble_transcript(no_endpointing + [{"event": "final", "reason": "eos"}]) == "one two three stop"


def test_finalize_many_batches_the_flush_and_equals_one_by_one():
    from operators.asr.stream_engine import LiveASR, random_live_asr

    engine = LiveASR(random_live_asr(seed=4).asr, DEFAULT_ENDPOINTING)
    rng = np.random.default_rng(4)
    states = []
    for n in (5000, 17000, 30001):
        _, (state,) = engine.step([(0.3 * rng.standard_normal(n)).astype(np.float32)], [engine.init_state()])
        states.append(state)
    one_by_one = [engine.finalize(state) for state in states]
    assert engine.finalize_many(states) == one_by_one and any(one_by_one)
