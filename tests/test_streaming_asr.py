"""Cache-aware streaming FastConformer: streaming == offline, state handling, decoding, front end."""

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from operators.asr.config import RNNTConfig, chunk_sizes
from operators.asr.frontend import MelConfig, log_mel, mel_filterbank
from operators.asr.layers import PackedLinear
from operators.asr.model import random_model, small_config
from operators.asr.state import concat_states, select_streams, state_from_numpy, state_to_numpy
from operators.asr.streaming import StreamingASR
from operators.asr.vocabulary import CharVocabulary

VOCAB = CharVocabulary(list("abcdefghijkl"))
torch.set_num_threads(1)  # tiny shapes: extra threads only add synchronisation on a shared machine


def _operator(context, dtype=torch.float32, seed=0, **overrides):
    config = small_config(**overrides)
    return StreamingASR(random_model(config, seed=seed, dtype=dtype), VOCAB, context)


def _stream(op, features, lengths):
    """Runs whole utterances through step(); returns per-stream concatenated encoder frames."""
    state = op.initial_state(features.shape[0])
    outputs = [[] for _ in range(features.shape[0])]
    for chunk, chunk_lengths in op.iter_chunks(features, lengths):
        out, state = op.step(chunk, chunk_lengths, state)
        assert out.encoded.shape[1] == op.chunk_sizes()[0]
        for row in range(features.shape[0]):
            outputs[row].append(out.encoded[row, : out.encoded_len[row]])
    return [torch.cat(parts) for parts in outputs]


def _max_diff(op, features, lengths):
    encoded, encoded_len = op.encode(features, lengths)
    streamed = _stream(op, features, lengths)
    worst = 0.0
    for row, frames in enumerate(streamed):
        assert frames.shape[0] == int(encoded_len[row])
        worst = max(worst, (frames - encoded[row, : encoded_len[row]]).abs().max().item())
    return worst


@pytest.mark.parametrize("context", [(70, 13), (70, 6), (70, 1)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_streaming_equals_offline_multi_lookahead(context, dtype, tol):
    # Batch of streams of different lengths, incl. non-multiples of 8 and one past the 70-frame cache.
    op = _operator(context, dtype)
    lengths = torch.tensor([641, 258, 97, 5])
    features = torch.randn(4, 80, 641, dtype=dtype, generator=torch.Generator().manual_seed(1))
    assert _max_diff(op, features, lengths) < tol


@pytest.mark.parametrize("context", [(4, 1), (6, 2), (3, 0)])
def test_streaming_equals_offline_small_cache(context):
    # A short cache is overwritten many times over: eviction and chunk alignment.
    op = _operator(context, torch.float64, seed=3)
    lengths = torch.tensor([203, 130, 66])
    features = torch.randn(3, 80, 203, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert _max_diff(op, features, lengths) < 1e-10


def test_zero_lookahead_matches_offline_and_why_nemo_buffer_does_not():
    # [70,0] is matched against the offline forward with the same (causal) mask. The first chunk is one
    # mel frame; the pre-encode cache of the next step then holds 8 frames from before the stream's
    # start. We mask them like the causal zero padding of the offline convs. NeMo's
    # CacheAwareStreamingAudioBuffer instead feeds them as valid zero mel frames, which is not
    # equivalent: emulating that here moves the first frames, and the error spreads through the
    # attention cache (REFERENCE: up to 0.08 in NeMo over the first ~280 frames).
    op = _operator((70, 0), torch.float64, seed=4)
    lengths = torch.tensor([140, 75])
    features = torch.randn(2, 80, 140, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert _max_diff(op, features, lengths) < 1e-10

    encoded, _ = op.encode(features[:1], lengths[:1])
    state = op.initial_state(1)
    chunks = list(op.iter_chunks(features[:1], lengths[:1]))
    first, _ = op.step(*chunks[0], state)
    _, state = op.step(*chunks[0], op.initial_state(1))
    nemo_like = state._replace(pre_encode_cache_len=torch.tensor([9]))  # zero pads counted as audio
    second, _ = op.step(*chunks[1], nemo_like)
    assert (first.encoded[0, 0] - encoded[0, 0]).abs().max() < 1e-10
    assert (second.encoded[0, 0] - encoded[0, 1]).abs().max() > 1e-3


def test_regular_style_and_batch_norm_stream():
    op = _operator((5, 0), torch.float64, seed=6, att_context_style="regular", conv_norm_type="batch_norm")
    with torch.no_grad():
        for layer in op.model.encoder.layers:
            layer.conv.batch_norm.running_mean.normal_()
            layer.conv.batch_norm.running_var.uniform_(0.5, 2.0)
    lengths = torch.tensor([90, 41])
    features = torch.randn(2, 80, 90, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    assert _max_diff(op, features, lengths) < 1e-10


def test_streams_join_leave_and_idle():
    op = _operator((8, 1), torch.float64, seed=8)
    _, first, later = op.chunk_sizes()
    gen = torch.Generator().manual_seed(9)
    utterances = [torch.randn(80, n, dtype=torch.float64, generator=gen) for n in (150, 99, 120)]
    expected = [op.encode(u.unsqueeze(0), torch.tensor([u.shape[1]]))[0][0] for u in utterances]
    # Stream 0 starts alone; stream 1 joins at step 2; stream 2 at step 4; finished streams leave.
    starts = {0: 0, 1: 2, 2: 4}
    offsets, outputs = {}, {k: [] for k in starts}
    active, state = [], None
    for step in range(200):
        joining = [k for k, s in starts.items() if s == step]
        if joining:
            fresh = op.initial_state(len(joining))
            state = fresh if state is None else concat_states([state, fresh])
            active += joining
            offsets.update({k: 0 for k in joining})
        if not active:
            break
        chunk = torch.zeros(len(active), 80, later, dtype=torch.float64)
        lengths = torch.zeros(len(active), dtype=torch.long)
        for row, k in enumerate(active):
            width = first if offsets[k] == 0 else later
            if k == 1 and step == 3:
                width = 0  # an idle step: the stream's state must not change
            piece = utterances[k][:, offsets[k] : offsets[k] + width]
            chunk[row, :, : piece.shape[1]] = piece
            lengths[row] = piece.shape[1]
            offsets[k] += width
        out, state = op.step(chunk, lengths, state)
        for row, k in enumerate(active):
            outputs[k].append(out.encoded[row, : out.encoded_len[row]])
        keep = [row for row, k in enumerate(active) if offsets[k] < utterances[k].shape[1]]
        active = [active[row] for row in keep]
        state = select_streams(state, keep) if keep else None
    for k, frames in outputs.items():
        got = torch.cat(frames)
        assert got.shape == expected[k].shape
        assert (got - expected[k]).abs().max() < 1e-10


def test_kv_cache_rebuilt_from_attention_cache_equals_the_stepped_one():
    """``kv_cache_from(cache_last_channel)`` gives the key/value cache the steps built, on every
    cached frame of every stream (a stream can be stored without it)."""
    op = _operator((12, 1), torch.float64, seed=4)
    lengths = torch.tensor([97, 40, 9])
    features = torch.randn(3, 80, 97, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    state = op.initial_state(3)
    for steps, (chunk, chunk_lengths) in enumerate(op.iter_chunks(features, lengths)):
        _, state = op.step(chunk, chunk_lengths, state)
        if steps == 4:
            break
    rebuilt = op.model.encoder.kv_cache_from(state.cache_last_channel)
    left = state.cache_last_kv.shape[2]
    for row, cached in enumerate(state.cache_last_channel_len.tolist()):
        assert cached > 0
        got, want = rebuilt[:, row, left - cached :], state.cache_last_kv[:, row, left - cached :]
        assert (got - want).abs().max() < 1e-12, row


def test_state_numpy_round_trip_and_rejects_wrong_shapes():
    op = _operator((70, 13), seed=10)
    features = torch.randn(2, 80, 400, generator=torch.Generator().manual_seed(11))
    lengths = torch.tensor([400, 300])
    chunks = list(op.iter_chunks(features, lengths))
    _, state = op.step(*chunks[0], op.initial_state(2))
    restored = state_from_numpy(state_to_numpy(state))
    a, _ = op.step(*chunks[1], state)
    b, _ = op.step(*chunks[1], restored)
    assert torch.equal(a.encoded, b.encoded)

    with pytest.raises(ValueError, match="cache_last_channel"):
        op.step(*chunks[1], _operator((6, 1)).initial_state(2)._replace(last_token=state.last_token))
    wider = StreamingASR(random_model(small_config(d_model=32)), VOCAB, (70, 13))
    with pytest.raises(ValueError, match="cache_last_channel"):
        op.step(*chunks[1], wider.initial_state(2))
    with pytest.raises(ValueError, match="pre_encode_cache"):
        op.step(*chunks[1], state._replace(pre_encode_cache=state.pre_encode_cache[:, :, :5]))
    with pytest.raises(ValueError, match="exceed"):
        op.step(features[:, :, :200], torch.tensor([200, 200]), state)
    with pytest.raises(ValueError, match="chunked_limited"):
        chunk_sizes((70, 3))


def test_ctc_greedy_recollapses_across_chunks():
    op = _operator((70, 1), seed=12)
    head = op.model.ctc_head.decoder_layers[0]
    with torch.no_grad():  # every frame says token 3: one token in total, not one per chunk
        head.weight.zero_()
        head.bias.fill_(-5.0)
        head.bias[3] = 5.0
    features = torch.randn(1, 80, 300, generator=torch.Generator().manual_seed(13))
    lengths = torch.tensor([300])
    assert op.transcribe_features(features, lengths) == [[3]]
    assert op.transcribe_features_streaming(features, lengths) == [[3]]


@pytest.mark.parametrize("decoder", ["ctc", "rnnt"])
def test_streaming_transcripts_equal_offline(decoder):
    config = replace(small_config(), rnnt=RNNTConfig(pred_hidden=32, joint_hidden=24, max_symbols=3))
    model = random_model(config, seed=14)
    with torch.no_grad():  # favour emissions so the decoders produce tokens
        model.ctc_decoder.decoder_layers[0].bias[-1] = -3.0
        model.joint.joint_net[-1].bias[-1] = -1.0
    op = StreamingASR(model, VOCAB, (70, 6), decoder)
    lengths = torch.tensor([333, 180, 57])
    features = torch.randn(3, 80, 333, generator=torch.Generator().manual_seed(15))
    offline = op.transcribe_features(features, lengths)
    assert any(offline)
    assert op.transcribe_features_streaming(features, lengths) == offline


def test_chunk_sizes_follow_context():
    assert chunk_sizes((70, 13)) == (14, 105, 112)
    assert chunk_sizes((70, 6)) == (7, 49, 56)
    assert chunk_sizes((70, 1)) == (2, 9, 16)
    assert chunk_sizes((70, 0)) == (1, 1, 8)
    assert 112 * 160 / 16000 == pytest.approx(1.12)


def _numpy_log_mel(audio: np.ndarray, config: MelConfig) -> np.ndarray:
    """Independent NumPy reference of NeMo's FilterbankFeatures at inference."""
    x = np.concatenate([audio[:1], audio[1:] - config.preemph * audio[:-1]]).astype(np.float64)
    half = config.n_fft // 2
    padded = np.pad(x, (half, half))
    window = np.zeros(config.n_fft)
    offset = (config.n_fft - config.win_length) // 2
    window[offset : offset + config.win_length] = np.hanning(config.win_length)
    frames = len(audio) // config.hop_length + 1
    spectra = np.stack(
        [np.abs(np.fft.rfft(padded[t * config.hop_length : t * config.hop_length + config.n_fft] * window)) ** 2
         for t in range(frames)], axis=1)
    fb = mel_filterbank(config).double().numpy()
    return np.log(fb @ spectra + config.log_zero_guard)


def test_log_mel_matches_numpy_reference_and_nemo_lengths():
    config = MelConfig()
    rng = np.random.default_rng(16)
    audio = (0.1 * rng.standard_normal(5000)).astype(np.float32)
    features, frames = log_mel(torch.from_numpy(audio), config=config)
    assert int(frames[0]) == 5000 // 160
    reference = _numpy_log_mel(audio, config)
    valid = int(frames[0])
    assert np.abs(features[0, :, :valid].numpy() - reference[:, :valid]).max() < 1e-3
    assert torch.all(features[0, :, valid:] == 0)
    # Batch rows with their own lengths equal the rows computed alone (padding does not leak).
    batch = torch.zeros(2, 5000)
    batch[0] = torch.from_numpy(audio)
    batch[1, :3000] = torch.from_numpy(audio[:3000])
    both, lengths = log_mel(batch, torch.tensor([5000, 3000]), config)
    alone, _ = log_mel(torch.from_numpy(audio[:3000]), config=config)
    assert lengths.tolist() == [31, 18]
    assert torch.allclose(both[1, :, :18], alone[0, :, :18], atol=1e-5)


def test_mel_filterbank_is_slaney_normalised():
    config = MelConfig()
    fb = mel_filterbank(config).double()
    assert fb.shape == (80, 257)
    bin_hz = config.sample_rate / config.n_fft
    areas = fb.sum(dim=1) * bin_hz  # Slaney norm: each triangle has unit area in Hz
    assert torch.allclose(areas[40:], torch.ones(40, dtype=torch.float64), atol=0.03)
    assert abs(float(areas[:40].mean()) - 1.0) < 0.05
    assert torch.all(fb >= 0) and torch.all(fb.sum(dim=1) > 0)
    centres = fb.argmax(dim=1)
    assert torch.all(centres[1:] >= centres[:-1])
    assert math.isclose(float(centres[-1]) * bin_hz, 7600, rel_tol=0.05)


def test_prepacked_linear_matches_linear_and_follows_weight_updates():
    torch.manual_seed(0)
    layer = PackedLinear(512, 512)
    x = torch.randn(3, 14, 512)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-4)
        assert layer.__dict__.get("_packed")  # the packed path ran
        layer.load_state_dict({"weight": torch.randn(512, 512), "bias": torch.randn(512)})  # invalidates the memo
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-4)
        layer.weight.mul_(2.0)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-4)
        vector = x[:1, :1]  # one row: a matrix-vector product stays with F.linear
        assert torch.equal(layer(vector), F.linear(vector, layer.weight, layer.bias))
        small = PackedLinear(64, 96)  # small matrices too
        assert torch.equal(small(x[..., :64]), F.linear(x[..., :64], small.weight, small.bias))
        x64 = x.double()
        assert torch.equal(layer.double()(x64), F.linear(x64, layer.weight, layer.bias))  # other dtypes: plain
    layer = layer.float()
    copied = copy.deepcopy(layer)  # the memo is dropped, not copied
    assert "_packed" not in copied.__dict__
    y = layer(x)  # gradients on: exactly nn.Linear, and differentiable
    y.sum().backward()
    assert torch.equal(y, F.linear(x, layer.weight, layer.bias)) and layer.weight.grad is not None
