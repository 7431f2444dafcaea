"""CoX3D-S per-frame step vs re-running the 16-frame clip for every new frame (one run).

Both sides use the same random X3D-S weights at 160×160. For each batch size B (independent
streams) it prints ms per new frame for (a) one continual step and (b) a full clip forward
over the last 16 frames, their ratio, and MACs per new frame for both (convolutions and
linear layers, counted with hooks). Ends with one JSON line.

    nice -n 10 .venv/bin/python benchmarks/bench_continual.py [--batch 1 4 8] [--repeats 5]
"""

import argparse
import json
import time
from typing import Dict, List

import torch
from torch import nn

from operators.continual import clone_state
from operators.x3d import co_x3d, x3d_s


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


def time_clip(net: nn.Module, clip: torch.Tensor, repeats: int) -> float:
    """Median seconds of one clip forward."""
    times = []
    with torch.inference_mode():
        net(clip)
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(clip)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def time_steps(co, frames: torch.Tensor, warm: int, steps: int) -> float:
    """Median seconds of one continual step, after ``warm`` steps fill the state."""
    state = co.init_state(frames.shape[0])
    times: List[float] = []
    with torch.inference_mode():
        for t in range(warm + steps):
            t0 = time.perf_counter()
            y, state = co.step(frames[:, :, t % frames.shape[2]], state)
            if t >= warm:
                times.append(time.perf_counter() - t0)
    assert y is not None
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--clip", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="clip forwards timed per batch size")
    parser.add_argument("--steps", type=int, default=30, help="continual steps timed per batch size")
    args = parser.parse_args()
    torch.manual_seed(0)
    clip_net = x3d_s(clip_length=args.clip, crop_size=args.size).eval()
    step_net = x3d_s(clip_length=args.clip, crop_size=args.size).eval()
    step_net.load_state_dict(clip_net.state_dict())
    co = co_x3d(step_net, window=args.clip)
    macs = count_macs(clip_net, torch.randn(1, 3, args.clip, args.size, args.size))
    results = []
    print(f"CoX3D-S {args.size}x{args.size}, clip {args.clip}, delay {co.delay} frames, "
          f"threads {torch.get_num_threads()}")
    print(f"MACs per new frame: clip {macs['clip'] / 1e9:.3f} G, step {macs['step'] / 1e9:.3f} G "
          f"({macs['clip'] / macs['step']:.1f}x fewer)")
    print(f"{'B':>3} {'clip ms/frame':>14} {'step ms/frame':>14} {'speed-up':>9}")
    for b in args.batch:
        clip = torch.randn(b, 3, args.clip, args.size, args.size)
        clip_s = time_clip(clip_net, clip, args.repeats)
        step_s = time_steps(co, clip, co.delay + 2, args.steps)
        row = {"batch": b, "clip_ms_per_frame": clip_s * 1e3 / b, "step_ms_per_frame": step_s * 1e3 / b,
               "speedup": clip_s / step_s}
        results.append(row)
        print(f"{b:>3} {row['clip_ms_per_frame']:>14.1f} {row['step_ms_per_frame']:>14.1f} {row['speedup']:>8.1f}x")
    print(json.dumps({"bench": "continual", "size": args.size, "clip": args.clip, "delay": co.delay,
                      "macs_clip_g": round(macs["clip"] / 1e9, 4), "macs_step_g": round(macs["step"] / 1e9, 4),
                      "results": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in results]}))


if __name__ == "__main__":
    main()
