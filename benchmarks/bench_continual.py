"""CoX3D-S per-frame step vs re-running the 16-frame clip for every new frame (one run).

Both sides use the same random X3D-S weights at 160×160. For each batch size B (independent
streams) it prints ms per new frame for (a) one continual step (BN folded; for B=1 also the
weight-sharing unfused step) and (b) a full clip forward over the last 16 frames, both as
the regular X3D-S and with its BatchNorms folded too (the like-for-like baseline), their
ratios, and MACs per new frame (convolutions and linear layers, counted with hooks). Ends
with one JSON line.

The clip forward and the steps are timed interleaved (one clip, then a few steps, repeated)
so load changes on a shared machine hit both alike. Denormal floats are flushed for both:
deep activations of random weights decay into denormals, which slow any CPU kernel 4×+.

    nice -n 10 .venv/bin/python benchmarks/bench_continual.py [--batch 1 4 8] [--repeats 5]
"""

import argparse
import json
import time
from typing import Dict, List

import torch
from torch import nn

from operators.video.co_x3d import co_x3d
from operators.video.x3d import BottleneckBlock, ProjectedPool, ResBlock, ResNetBasicStem, x3d_s


def count_macs(net: nn.Module, clip: torch.Tensor) -> Dict[str, float]:
    """MACs of one clip forward and of one continual step (each conv/linear once per frame)."""
    per_clip, per_frame = [0.0], [0.0]

    def conv_hook(m: nn.Conv3d, _inp, out):
        cout, t_out, h, w = out.shape[1:]
        frame = cout * h * w * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1] * m.kernel_size[2]
        per_clip[0] += frame * t_out
        per_frame[0] += frame

    def linear_hook(m: nn.Linear, inp, out):
        positions = out.numel() // out.shape[-1] // out.shape[0]
        per_clip[0] += m.in_features * m.out_features * positions
        per_frame[0] += m.in_features * m.out_features

    hooks = [m.register_forward_hook(conv_hook) for m in net.modules() if isinstance(m, nn.Conv3d)]
    hooks += [m.register_forward_hook(linear_hook) for m in net.modules() if isinstance(m, nn.Linear)]
    with torch.inference_mode():
        net(clip[:1])
    for h in hooks:
        h.remove()
    return {"clip": per_clip[0], "step": per_frame[0]}


def fold_x3d_batchnorm(net: nn.Module) -> nn.Module:
    """Folds each BatchNorm of X3D into the conv before it (the clip-side twin of ``fused``)."""
    pairs = []
    for m in net.modules():
        if isinstance(m, BottleneckBlock):
            pairs += [(m, "conv_a", m, "norm_a"), (m, "conv_b", m.norm_b, "0"), (m, "conv_c", m, "norm_c")]
        elif isinstance(m, ResBlock) and m.branch1_norm is not None:
            pairs.append((m, "branch1_conv", m, "branch1_norm"))
        elif isinstance(m, ResNetBasicStem):
            pairs.append((m.conv, "conv_xy", m, "norm"))
        elif isinstance(m, ProjectedPool):
            pairs.append((m, "pre_conv", m, "pre_norm"))
    with torch.no_grad():
        for conv_parent, conv_name, bn_parent, bn_name in pairs:
            conv, bn = getattr(conv_parent, conv_name), getattr(bn_parent, bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, bias=True)
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1, 1))
            fused.bias.copy_(bn.bias - bn.running_mean * scale)
            setattr(conv_parent, conv_name, fused)
            setattr(bn_parent, bn_name, nn.Identity())
    return net.eval()


def warm_state(co, frames: torch.Tensor):
    """State after enough frames that every module produces output (``delay + 1`` steps)."""
    state = co.init_state(frames.shape[0])
    with torch.inference_mode():
        for t in range(co.delay + 1):
            y, state = co.step(frames[:, :, t % frames.shape[2]], state)
    assert y is not None
    return state


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(clip_nets, steppers, clip: torch.Tensor, repeats: int, steps: int) -> Dict[str, float]:
    """Median seconds per new frame, clip forwards and steppers interleaved per repeat so
    that load changes on a shared machine hit all of them alike."""
    states = {name: warm_state(co, clip) for name, co in steppers.items()}
    times: Dict[str, List[float]] = {**{name: [] for name in clip_nets}, **{name: [] for name in steppers}}
    with torch.inference_mode():
        for net in clip_nets.values():
            net(clip)
        for r in range(repeats):
            for name, net in clip_nets.items():
                times[name].append(timed(lambda: net(clip)))
            for name, co in steppers.items():
                for i in range(steps):
                    frame = clip[:, :, (r * steps + i) % clip.shape[2]]

                    def one():
                        y, states[name] = co.step(frame, states[name])

                    times[name].append(timed(one))
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--clip", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="clip forwards timed per batch size")
    parser.add_argument("--steps", type=int, default=4, help="continual steps timed after each clip forward")
    parser.add_argument("--unfused-batch", type=int, nargs="*", default=[1],
                        help="batch sizes where the unfused (weight-sharing) stepper is timed too")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="do not flush denormal floats (random-weight activations decay into them)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both sides (1: no OpenMP barriers between the many "
                             "small per-frame ops, the usual setting for one Beam worker per core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(not args.keep_denormals)
    torch.manual_seed(0)
    clip_net = x3d_s(clip_length=args.clip, crop_size=args.size).eval()
    nets = []
    for _ in range(3):
        net = x3d_s(clip_length=args.clip, crop_size=args.size).eval()
        net.load_state_dict(clip_net.state_dict())
        nets.append(net)
    shared = co_x3d(nets[0], window=args.clip)
    fused = co_x3d(nets[1], window=args.clip, fused=True)
    clip_nets = {"clip": clip_net, "clip_fused": fold_x3d_batchnorm(nets[2])}
    macs = count_macs(clip_net, torch.randn(1, 3, args.clip, args.size, args.size))
    results = []
    print(f"CoX3D-S {args.size}x{args.size}, clip {args.clip}, delay {fused.delay} frames, "
          f"threads {torch.get_num_threads()}")
    print(f"MACs per new frame: clip {macs['clip'] / 1e9:.3f} G, step {macs['step'] / 1e9:.3f} G "
          f"({macs['clip'] / macs['step']:.1f}x fewer)")
    print(f"{'B':>3} {'clip ms/frame':>14} {'step ms/frame':>14} {'speed-up':>9}   "
          f"{'clip BN-folded':>15} {'speed-up':>9}   unfused step (vs clip)")
    for b in args.batch:
        clip = torch.randn(b, 3, args.clip, args.size, args.size)
        steppers = {"fused": fused} if b not in args.unfused_batch else {"fused": fused, "shared": shared}
        sec = measure(clip_nets, steppers, clip, args.repeats, args.steps)
        row = {"batch": b, "clip_ms_per_frame": sec["clip"] * 1e3 / b,
               "step_ms_per_frame": sec["fused"] * 1e3 / b, "speedup": sec["clip"] / sec["fused"],
               "clip_fused_ms_per_frame": sec["clip_fused"] * 1e3 / b,
               "speedup_vs_fused_clip": sec["clip_fused"] / sec["fused"]}
        if "shared" in sec:
            row["unfused_step_ms_per_frame"] = sec["shared"] * 1e3 / b
            row["unfused_speedup"] = sec["clip"] / sec["shared"]
        results.append(row)
        unfused = row.get("unfused_step_ms_per_frame")
        print(f"{b:>3} {row['clip_ms_per_frame']:>14.1f} {row['step_ms_per_frame']:>14.1f} {row['speedup']:>8.1f}x   "
              f"{row['clip_fused_ms_per_frame']:>15.1f} {row['speedup_vs_fused_clip']:>8.1f}x   "
              + (f"{unfused:.1f} ms ({row['unfused_speedup']:.1f}x)" if unfused else "-"))
    print(json.dumps({"bench": "continual", "size": args.size, "clip": args.clip, "delay": fused.delay,
                      "threads": torch.get_num_threads(),
                      "macs_clip_g": round(macs["clip"] / 1e9, 4), "macs_step_g": round(macs["step"] / 1e9, 4),
                      "results": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in results]}))


if __name__ == "__main__":
    main()
