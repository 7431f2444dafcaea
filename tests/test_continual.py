"""Continual operators: stepped output equals the offline forward pass (after the delay)."""

import numpy as np
import pytest
import torch
from continual_helpers import stepped
from torch import nn

from operators.video.continual.containers import Parallel
from operators.video.continual.conv import CoConv3d
from operators.video.continual.convert import from_module, fuse
from operators.video.continual.pooling import SlidingGlobalAvgPool
from operators.video.continual.squeeze_excitation import CausalSqueezeExcitation
from operators.video.continual.state import clone_state, state_from_numpy, state_to_numpy
from operators.video.continual.stepper import StreamStepper

TOL = dict(atol=1e-5, rtol=1e-5)


def _stream(batch=2, channels=3, frames=12, size=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, frames, size, size, generator=g)


def _check_equivalent(module, stream):
    module.eval()
    co = from_module(module)
    with torch.no_grad():
        ref = module(stream)
        got, first = stepped(co, stream)
    assert first == co.delay
    n = got.shape[2]
    assert n >= 1 and n <= ref.shape[2]
    torch.testing.assert_close(got, ref[:, :, :n], **TOL)
    return co, n, ref.shape[2]


@pytest.mark.parametrize(
    "k,s,p,fill,groups",
    [(3, 1, 0, "zeros", 1), (3, 1, 1, "zeros", 1), (3, 2, 0, "zeros", 1), (3, 2, 1, "zeros", 1),
     (5, 1, 2, "zeros", 3), (2, 1, 1, "replicate", 1), (3, 2, 2, "replicate", 3), (1, 2, 0, "zeros", 1),
     (1, 1, 0, "zeros", 1)],
)
def test_conv3d_stepped_equals_forward(k, s, p, fill, groups):
    torch.manual_seed(k * 10 + s + p)
    conv = nn.Conv3d(3, 6, (k, 3, 3), stride=(s, 2, 1), padding=(p, 1, 0), groups=groups, padding_mode=fill)
    stream = _stream()
    co, n, n_ref = _check_equivalent(conv, stream)
    assert co.delay == k - 1 - p
    # Only the outputs that need end padding (not yet seen) are missing.
    assert n == len(range(k - 1 - p, stream.shape[2], s))
    assert n_ref - n <= (p + s - 1) // s


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("k,s,p", [(3, 1, 0), (3, 2, 1), (2, 2, 0), (4, 1, 1)])
def test_pool3d_stepped_equals_forward(kind, k, s, p):
    if kind == "avg":
        pool = nn.AvgPool3d((k, 2, 2), stride=(s, 2, 2), padding=(p, 1, 1))
    else:
        pool = nn.MaxPool3d((k, 3, 3), stride=(s, 1, 1), padding=(p, 1, 1))
    co, _, _ = _check_equivalent(pool, _stream())
    assert co.delay == k - 1 - p and co.stride == s


def test_sequential_delay_and_stride_compose():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv3d(3, 4, (3, 3, 3), stride=(2, 1, 1), padding=(1, 1, 1)),
        nn.BatchNorm3d(4),
        nn.ReLU(),
        nn.Conv3d(4, 4, (3, 1, 1), padding=(0, 0, 0)),
        nn.MaxPool3d((2, 2, 2), stride=(1, 2, 2)),
        nn.SiLU(),
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    co, _, _ = _check_equivalent(net, _stream(frames=20))
    assert co.delay == 1 + 2 * 2 + 2 * 1 and co.stride == 2


def test_fuse_folds_batchnorm_and_keeps_outputs():
    torch.manual_seed(9)
    net = nn.Sequential(
        nn.Conv3d(3, 4, (3, 3, 3), padding=(1, 1, 1), padding_mode="replicate"),
        nn.Sequential(nn.BatchNorm3d(4), nn.ReLU()),
        Parallel([nn.Identity(), nn.Sequential(nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0), bias=False), nn.BatchNorm3d(4))]),
    ).eval()
    for bn in (net[1][0], net[2].branches[1][1]):
        with torch.no_grad():
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    stream = _stream(frames=10)
    co = fuse(from_module(net))
    names = [type(m).__name__ for m in co.modules()]
    assert "CoBatchNorm" not in names
    with torch.no_grad():
        got, first = stepped(co, stream)
        ref = net(stream)
    assert first == co.delay == 2
    torch.testing.assert_close(got, ref[:, :, : got.shape[2]], **TOL)


def test_residual_branches_with_different_delays_are_aligned():
    torch.manual_seed(2)
    net = nn.Sequential(
        Parallel(
            [nn.Identity(), nn.Conv3d(3, 3, (5, 3, 3), padding=(2, 1, 1)), nn.Conv3d(3, 3, (3, 1, 1), padding=(1, 0, 0))],
            reduce="sum",
        ),
        Parallel([nn.Conv3d(3, 2, 1), nn.Sequential(nn.Conv3d(3, 2, (3, 3, 3), padding=(1, 1, 1)), nn.ReLU())], reduce="cat"),
    )
    co, _, _ = _check_equivalent(net, _stream(frames=14))
    assert co.delay == 3


def test_strided_residual_branches():
    torch.manual_seed(3)
    net = Parallel(
        [nn.Conv3d(3, 4, (1, 1, 1), stride=(2, 1, 1)), nn.Conv3d(3, 4, (3, 3, 3), stride=(2, 1, 1), padding=(1, 1, 1))],
        reduce="mul",
    )
    _check_equivalent(net, _stream(frames=15))


def test_causal_se_and_sliding_global_pool():
    torch.manual_seed(4)
    block = nn.Sequential(nn.Conv3d(3, 8, 1), nn.ReLU(), nn.Conv3d(8, 3, 1), nn.Sigmoid())
    net = nn.Sequential(CausalSqueezeExcitation(block, window=4), nn.Conv3d(3, 5, (3, 3, 3), padding=(1, 1, 1)), SlidingGlobalAvgPool(3))
    module = net.eval()
    co = from_module(module)
    stream = _stream(frames=13)
    with torch.no_grad():
        ref = module(stream)
        got, first = stepped(co, stream)
    assert first == co.delay == 1 + 2
    torch.testing.assert_close(got, ref[:, :, : got.shape[2]], **TOL)


def test_equals_sliding_window_clips_without_temporal_padding():
    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv3d(3, 4, (3, 3, 3), padding=(0, 1, 1)), nn.ReLU(), nn.Conv3d(4, 4, (2, 1, 1)), nn.AvgPool3d((3, 2, 2))
    ).eval()
    # The last pool has temporal stride 3 by default: make the whole net stride 1.
    net[3] = nn.AvgPool3d((3, 2, 2), stride=(1, 2, 2))
    co = from_module(net)
    receptive = co.delay + 1
    stream = _stream(frames=12)
    state = co.init_state(2)
    checked = 0
    with torch.no_grad():
        for t in range(stream.shape[2]):
            y, state = co.step(stream[:, :, t], state)
            if t < co.delay:
                assert y is None
                continue
            clip = stream[:, :, t - receptive + 1 : t + 1]
            ref = net(clip)
            assert ref.shape[2] == 1
            torch.testing.assert_close(y, ref[:, :, 0], **TOL)
            checked += 1
    assert checked == stream.shape[2] - co.delay


def test_batch_of_streams_reset_at_different_times():
    torch.manual_seed(6)
    net = nn.Sequential(
        nn.Conv3d(3, 4, (3, 3, 3), stride=(2, 1, 1), padding=(1, 1, 1)),
        nn.ReLU(),
        Parallel([nn.Identity(), nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0), padding_mode="replicate")]),
        nn.AvgPool3d((2, 1, 1), stride=1),
    ).eval()
    co = from_module(net)
    total = 24
    resets = {0: [0, 5, 14], 1: [0, 9], 2: [0, 3, 4, 17]}
    frames = _stream(batch=3, frames=total, seed=7)
    state = co.init_state(3)
    outs = {b: [] for b in range(3)}
    with torch.no_grad():
        for t in range(total):
            reset = np.array([t in resets[b] for b in range(3)])
            y, valid, state = co.step_masked(frames[:, :, t], None, reset, state)
            if y is None:
                continue
            for b in range(3):
                if valid is None or valid[b]:
                    outs[b].append(y[b])
        compared = 0
        for b in range(3):
            starts = resets[b] + [total]
            segments = [frames[b : b + 1, :, s:e] for s, e in zip(starts[:-1], starts[1:])]
            expected = []
            for seg in segments:
                n = len(range(co.delay, seg.shape[2], co.stride))
                if n:
                    expected.extend(net(seg)[0, :, :n].unbind(1))
            assert len(outs[b]) == len(expected)
            for got, ref in zip(outs[b], expected):
                torch.testing.assert_close(got, ref, **TOL)
                compared += 1
    assert compared > 10


def test_state_batch_mismatch_raises():
    co = CoConv3d(nn.Conv3d(3, 2, (3, 1, 1)))
    state = co.init_state(2)
    with pytest.raises(ValueError, match="2 stream"):
        co.step(torch.zeros(3, 3, 4, 4), state)


def test_state_numpy_round_trip_continues_the_stream():
    torch.manual_seed(8)
    net = nn.Sequential(
        nn.Conv3d(3, 4, (3, 3, 3), padding=(1, 1, 1)),
        Parallel([nn.Identity(), nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0))]),  # identity gets a CoDelay
        nn.MaxPool3d((2, 1, 1), stride=1),
        CausalSqueezeExcitation(nn.Sequential(nn.Conv3d(4, 4, 1), nn.Sigmoid()), window=3),
    ).eval()
    co = from_module(net)
    stream = _stream(frames=10)
    with torch.no_grad():
        ref, _ = stepped(co, stream)
        state = co.init_state(2)
        outs = []
        for t in range(stream.shape[2]):
            state = state_from_numpy(state_to_numpy(clone_state(state)))
            y, state = co.step(stream[:, :, t], state)
            if y is not None:
                outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 2), ref, rtol=0, atol=0)


def test_clip_global_ops_are_rejected_with_a_fix():
    with pytest.raises(TypeError, match="SlidingGlobalAvgPool"):
        from_module(nn.Sequential(nn.Conv3d(3, 3, 1), nn.AdaptiveAvgPool3d(1)))
    with pytest.raises(ValueError, match="dilation"):
        from_module(nn.Conv3d(3, 3, 3, dilation=(2, 1, 1)))


def test_from_module_shares_weights():
    conv = nn.Conv3d(3, 2, (3, 1, 1), padding=(1, 0, 0))
    net = nn.Sequential(conv, nn.BatchNorm3d(2)).eval()
    co = from_module(net)
    assert co.layers[0].conv.weight is conv.weight and co.layers[1].bn is net[1]
    stream = _stream(frames=5)
    with torch.no_grad():
        before, _ = stepped(co, stream)
        conv.weight.mul_(2.0)  # a later update of the trained module shows in the continual one
        after, _ = stepped(co, stream)
        torch.testing.assert_close(after, net(stream)[:, :, : after.shape[2]], **TOL)
    assert not torch.allclose(before, after)


def test_stream_states_stack_into_a_batch_and_split_back():
    torch.manual_seed(10)
    net = nn.Sequential(
        nn.Conv3d(3, 4, (3, 3, 3), stride=(2, 1, 1), padding=(1, 1, 1)),
        Parallel([nn.Identity(), nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0))]),
        nn.AvgPool3d((2, 1, 1), stride=1),
        CausalSqueezeExcitation(nn.Sequential(nn.Conv3d(4, 4, 1), nn.Sigmoid()), window=3),
    ).eval()
    stepper = StreamStepper(from_module(net), torch.from_numpy)
    frames = _stream(batch=3, frames=12, seed=11).numpy()
    starts = [0, 3, 4]  # streams join the batch at different frames (out of stride phase)
    single = {b: [] for b in range(3)}
    for b in range(3):
        state = stepper.init_state()
        for t in range(starts[b], 12):
            y, state = stepper.step(frames[b, :, t], state)
            single[b].append(y)
    states = [stepper.init_state() for _ in range(3)]
    batched = {b: [] for b in range(3)}
    for t in range(12):
        live = [b for b in range(3) if t >= starts[b]]
        outs, new = stepper.step_many([frames[b, :, t] for b in live], [states[b] for b in live])
        for b, y, s in zip(live, outs, new):
            states[b] = s
            batched[b].append(y)
    for b in range(3):
        assert [y is None for y in batched[b]] == [y is None for y in single[b]]
        for got, ref in zip(batched[b], single[b]):
            if ref is not None:
                np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
