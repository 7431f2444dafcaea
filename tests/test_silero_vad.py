"""Silero VAD in plain PyTorch: equal to Silero's own TorchScript model window by window (state
included), batched streams independent of each other, stepped equal to offline, and a missing
package reported with how to fix it."""

import warnings

import numpy as np
import pytest
import torch

import operators.asr.silero_vad as vad_operator
from operators.asr.silero_vad import (CONTEXT, WINDOW, VADState, concat_states, load_silero_vad, package_file,
                                      select_streams)
from tests.live_speech import RATE, needs_espeak, noise, speak

torch.set_num_threads(1)
if vad_operator.find_spec("silero_vad") is None:
    pytest.skip("silero-vad is not installed (pip install --no-deps silero-vad==6.2.3)", allow_module_level=True)
TOLERANCE = 1e-6  # measured: bitwise equal to the TorchScript model (x86 CPU)
BATCH_TOLERANCE = 1e-5  # measured <= 3.1e-6 (32 streams): batch size changes the convolutions rounding


def _synthetic_speech(seconds: float, seed: int) -> np.ndarray:
    """A voiced-speech-like signal: harmonics of a gliding pitch, 4 Hz syllables, a little noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voiced = sum(np.sin(k * phase) / k * (1 + 0.8 * np.sin(2 * np.pi * (0.9 + 0.37 * k) * t)) for k in range(1, 30))
    syllables = np.sqrt(np.clip(np.sin(2 * np.pi * 4 * t), 0, None))
    return (0.1 * voiced * syllables).astype(np.float32) + noise(len(t), seed, 0.003)


def _audio(kind: str, seed: int = 0) -> np.ndarray:
    """Quiet noise, or silence → speech → silence (espeak-ng or synthetic speech)."""
    if kind == "noise":
        return noise(2 * RATE, seed)
    speech = speak("one two three") if kind == "espeak" else _synthetic_speech(1.5, seed)
    return np.concatenate([noise(RATE * 6 // 10, seed + 1), speech, noise(RATE * 8 // 10, seed + 2)])


@pytest.fixture(scope="module")
def model():
    return load_silero_vad()


@pytest.fixture(scope="module")
def jit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(package_file("silero_vad.jit")), map_location="cpu")


@pytest.mark.parametrize("kind", [pytest.param("espeak", marks=needs_espeak), "synthetic", "noise"])
def test_equals_silero_torchscript_window_by_window(model, jit, kind):
    audio = torch.from_numpy(_audio(kind))
    jit.reset_states()
    state = model.init_state(1)
    ours, theirs = [], []
    for start in range(0, len(audio) - WINDOW + 1, WINDOW):
        window = audio[None, start : start + WINDOW]
        theirs.append(jit(window, RATE).item())
        prob, state = model.step(window, state)
        ours.append(prob.item())
        torch.testing.assert_close(torch.stack([state.h, state.c]), jit._state, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(state.context, jit._context, atol=0, rtol=0)
    np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)
    if kind == "noise":
        assert max(theirs) < 0.5
    else:
        assert min(theirs) < 0.1 and max(theirs) > 0.9


def test_batched_streams_joining_at_different_times_equal_each_stream_alone(model):
    streams = [_audio("synthetic", 0), _audio("noise", 3), _audio("synthetic", 7)[: 40 * WINDOW]]
    starts = [0, 5, 11]  # the step at which each stream sends its first window
    windows = [torch.from_numpy(s[: len(s) // WINDOW * WINDOW]).reshape(-1, WINDOW) for s in streams]
    states = [model.init_state(1) for _ in streams]
    probs = [[] for _ in streams]
    for tick in range(max(start + len(w) for start, w in zip(starts, windows))):
        active = [k for k, (start, w) in enumerate(zip(starts, windows)) if start <= tick < start + len(w)]
        batch = torch.stack([windows[k][tick - starts[k]] for k in active])
        prob, state = model.step(batch, concat_states([states[k] for k in active]))
        for row, k in enumerate(active):
            probs[k].append(prob[row].item())
            states[k] = select_streams(state, [row])
    for stream, got in zip(streams, probs):
        np.testing.assert_allclose(got, model(torch.from_numpy(stream)[None])[0].numpy(), atol=BATCH_TOLERANCE,
                                   rtol=0)


@pytest.mark.parametrize("seed", range(2))
def test_stepped_in_any_grouping_equals_offline(model, seed):
    rng = np.random.default_rng(seed)
    audio = torch.from_numpy(np.stack([_audio("synthetic", seed)[: 2 * RATE], _audio("noise", seed)]))
    audio = audio[:, : audio.shape[1] - int(rng.integers(1, WINDOW))]  # a partial last window is left out
    offline = model(audio)
    assert offline.shape == (2, audio.shape[1] // WINDOW)
    stored = {name: field.numpy() for name, field in model.init_state(2)._asdict().items()}
    stepped, start = [], 0
    while start + WINDOW <= audio.shape[1]:  # calls of 1-4 windows; the state is stored as numpy in between
        state = VADState(**{name: torch.from_numpy(array) for name, array in stored.items()})
        for _ in range(int(rng.integers(1, 5))):
            if start + WINDOW > audio.shape[1]:
                break
            prob, state = model.step(audio[:, start : start + WINDOW], state)
            stepped.append(prob)
            start += WINDOW
        stored = {name: field.numpy() for name, field in state._asdict().items()}
    torch.testing.assert_close(torch.stack(stepped, dim=1), offline, atol=0, rtol=0)
    assert stored["context"].shape == (2, CONTEXT)


def test_step_rejects_wrong_window_shapes(model):
    with pytest.raises(ValueError, match="expected windows"):
        model.step(torch.zeros(2, WINDOW - 1), model.init_state(2))
    with pytest.raises(ValueError, match="expected windows"):
        model.step(torch.zeros(3, WINDOW), model.init_state(2))


def test_safetensors_weights_load_into_the_same_network():
    tinygrad_port = load_silero_vad(str(package_file("silero_vad_16k.safetensors")))
    probs = tinygrad_port(torch.from_numpy(_audio("synthetic"))[None])[0]
    assert probs.min() < 0.1 and probs.max() > 0.5


def test_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(vad_operator, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps silero-vad==6\.2\.3") as error:
        load_silero_vad()
    assert "silero_vad_16k.safetensors" in str(error.value)
