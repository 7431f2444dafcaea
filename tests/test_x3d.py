"""X3D definitions (pytorchvideo key names, local loading) and CoX3D stepped == offline."""

import numpy as np
import pytest
import torch
from continual_helpers import stepped

from operators.video.co_x3d import co_x3d
from operators.video.x3d import create_x3d, load_x3d, x3d_m, x3d_s

TOL = dict(atol=1e-5, rtol=1e-5)


def _tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    net = create_x3d(
        clip_length=4, crop_size=32, num_classes=5, width_factor=1.0, depth_factor=0.5, stem_dim_in=4,
        bottleneck_factor=1.5, head_dim_out=16, **kwargs,
    )
    # Non-trivial BatchNorm statistics so that folding mistakes would show.
    g = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def test_state_dict_keys_follow_pytorchvideo():
    sd = x3d_s().state_dict()
    # Key names and shapes as built by pytorchvideo.models.x3d.create_x3d (X3D-S).
    expected = {
        "blocks.0.conv.conv_t.weight": (24, 3, 1, 3, 3),
        "blocks.0.conv.conv_xy.weight": (24, 1, 5, 1, 1),
        "blocks.0.norm.running_var": (24,),
        "blocks.1.res_blocks.0.branch1_conv.weight": (24, 24, 1, 1, 1),
        "blocks.1.res_blocks.0.branch2.norm_b.1.block.0.weight": (8, 54, 1, 1, 1),
        "blocks.1.res_blocks.0.branch2.norm_b.1.block.2.bias": (54,),
        "blocks.2.res_blocks.0.branch1_norm.weight": (48,),
        "blocks.3.res_blocks.10.branch2.conv_b.weight": (216, 1, 3, 3, 3),
        "blocks.4.res_blocks.6.branch2.conv_c.weight": (192, 432, 1, 1, 1),
        "blocks.5.pool.pre_conv.weight": (432, 192, 1, 1, 1),
        "blocks.5.pool.post_conv.weight": (2048, 432, 1, 1, 1),
        "blocks.5.proj.weight": (400, 2048),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "blocks.1.res_blocks.1.branch2.norm_b.1.block.0.weight" not in sd  # SE every other block
    assert len(sd) == 563
    assert sum(p.numel() for p in x3d_s().parameters()) == 3_794_274
    assert x3d_m().state_dict().keys() == sd.keys()


def test_load_local_checkpoint_weights_only(tmp_path):
    src = x3d_s(num_classes=7, clip_length=4, crop_size=32).eval()
    path = tmp_path / "X3D_S.pyth"
    torch.save({"model_state": src.state_dict(), "epoch": 1}, path)
    loaded = load_x3d(str(path), "s", num_classes=7, clip_length=4, crop_size=32)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip), src(clip), rtol=0, atol=0)
    with pytest.raises(ValueError, match="variant"):
        load_x3d(str(path), "xl")


@pytest.mark.parametrize("window,fused", [(4, False), (6, False), (4, True)])
def test_cox3d_stepped_equals_offline(window, fused):
    net = _tiny(head_softmax=window == 6)
    co = co_x3d(net, window=window, fused=fused)
    stream = torch.randn(2, 3, 18, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = net.forward_frames(stream)
        got, first = stepped(co, stream)
    # Delay: stem temporal conv (5, pad 2) and every 3x3x3 conv (pad 1) are 2 + depth frames
    # behind the input, and the head pool needs window - 1 more.
    assert first == co.delay
    assert got.shape[1] == 5 and got.shape[2] == stream.shape[2] - co.delay
    torch.testing.assert_close(got, ref[:, :, : got.shape[2]], **TOL)


def test_cox3d_streams_reset_at_different_times():
    net = _tiny(seed=4)
    co = co_x3d(net, window=4)
    total, reset_at = 22, 6
    stream = torch.randn(2, 3, total, 32, 32, generator=torch.Generator().manual_seed(5))
    state = co.init_state(2)
    rows = {0: [], 1: []}
    with torch.no_grad():
        for t in range(total):
            reset = np.array([t == 0, t in (0, reset_at)])
            y, valid, state = co.step_masked(stream[:, :, t], None, reset, state)
            for b in (0, 1):
                if y is not None and (valid is None or valid[b]):
                    rows[b].append(y[b])
        ref0 = net.forward_frames(stream[:1])[0]
        ref1 = net.forward_frames(stream[1:, :, reset_at:])[0]
    assert len(rows[0]) == total - co.delay and len(rows[1]) == total - reset_at - co.delay
    torch.testing.assert_close(torch.stack(rows[0], 1), ref0[:, : len(rows[0])], **TOL)
    torch.testing.assert_close(torch.stack(rows[1], 1), ref1[:, : len(rows[1])], **TOL)
