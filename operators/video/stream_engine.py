"""Live continual video: encoded frames in, per-frame predictions out, state as numpy (no Beam).

Wraps a :class:`operators.video.continual.StreamStepper` (e.g. CoX3D) with the same interface as
:class:`operators.asr.stream_engine.LiveASR` (``init_state`` / ``push`` / ``ready`` / ``step_batch`` /
``finished``), so one Beam DoFn serves both. A pushed frame waits in the stream's state until
the next ``step_batch``; every ready stream advances by one frame per call.

``step_batch`` advances every ready stream by one frame in one batched network step
(``StreamStepper.step_many``: the streams' numpy state trees are stacked into one batch and
split again), so video throughput grows with concurrency like ASR.
"""

import io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from operators.tokenizers.base import MediaError
from operators.video.continual import StreamStepper

__all__ = ["LiveVideo", "FrameFormatError"]

State = Dict[str, object]


class FrameFormatError(MediaError):
    """A payload that is not a decodable image."""


class LiveVideo:
    """Per-stream live runner of a continual video network.

    Args:
        stepper: The single-stream continual network.
        width: Frames are resized to ``width`` × ``height`` before the network.
        height: See ``width``.
        top_k: Classes reported per prediction.
    """

    def __init__(self, stepper: StreamStepper, width: int, height: int, top_k: int = 5):
        self.stepper = stepper
        self.width, self.height, self.top_k = width, height, top_k

    def init_state(self) -> State:
        return {"net": self.stepper.init_state(), "queue": [], "index": np.zeros((), np.int64),
                "final": np.zeros((), np.bool_), "done": np.zeros((), np.bool_)}

    event_name = "prediction"

    def decode(self, kind: int, sample_rate: int, payload: bytes) -> Optional[np.ndarray]:
        """JPEG/PNG payload (kind 3) → ``[H, W, 3]`` uint8 at the configured size; kind 0
        without payload (a bare end-of-stream frame) → ``None``."""
        if int(kind) == 0 and not payload:
            return None
        if int(kind) != 3:
            raise FrameFormatError(f"payload kind {kind} is not an encoded image (3)")
        try:
            image = Image.open(io.BytesIO(payload))
            image = image.convert("RGB")
        except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad bytes
            raise FrameFormatError(f"payload is not a JPEG/PNG image ({type(err).__name__}: {err})") from err
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.BILINEAR)
        return np.array(image, dtype=np.uint8)

    def push(self, state: State, frame: Optional[np.ndarray], final: bool) -> State:
        state = dict(state)
        if frame is not None:
            state["queue"] = [*state["queue"], frame]
        if final:
            state["final"] = np.asarray(True)
        return state

    def ready(self, state: State) -> bool:
        return not bool(state["done"]) and (bool(state["queue"]) or bool(state["final"]))

    def finished(self, state: State) -> bool:
        return bool(state["done"])

    def ended(self, state: State) -> bool:
        """The end of the stream was pushed (its last steps may still be due)."""
        return bool(state["final"])

    def position(self, state: State) -> int:
        """Frames received so far."""
        return int(state["index"]) + len(state["queue"])

    def consumed(self, state: State) -> int:
        """Frames stepped so far."""
        return int(state["index"])

    def step_batch(self, states: Sequence[State]) -> List[Tuple[Optional[dict], State]]:
        """Steps one queued frame of each stream, all in one batched network step
        (``StreamStepper.step_many``); ``(prediction or None, state)`` per stream."""
        results: List[Tuple[Optional[dict], State]] = []
        rows, frames, nets = [], [], []
        for i, state in enumerate(states):
            state = dict(state)
            if state["queue"]:
                rows.append(i)
                frames.append(state["queue"][0])
                nets.append(state["net"])
                state["queue"] = state["queue"][1:]
            else:
                state["done"] = np.asarray(bool(state["final"]))
            results.append((None, state))
        if not rows:
            return results
        outputs, new_nets = self.stepper.step_many(frames, nets)
        for i, values, net in zip(rows, outputs, new_nets):
            state = results[i][1]
            state["net"] = net
            index = int(state["index"])
            state["index"] = np.asarray(index + 1, np.int64)
            if bool(state["final"]) and not state["queue"]:
                state["done"] = np.asarray(True)
            if values is not None:
                flat = np.asarray(values, np.float32).ravel()
                top = np.argsort(-flat)[: self.top_k]
                results[i] = ({
                    "frame_index": index,
                    "output_index": (index - self.stepper.delay) // self.stepper.stride,
                    "top_classes": [int(c) for c in top],
                    "top_scores": [round(float(flat[c]), 6) for c in top],
                }, state)
        return results


def live_co_x3d(variant: str = "s", window: int = 16, num_classes: int = 400, weights: Optional[str] = None,
                size: int = 160, top_k: int = 5, seed: int = 0) -> LiveVideo:
    """A ``LiveVideo`` over CoX3D (``operators.video.x3d.co_x3d_stepper``) at ``size``×``size``."""
    from operators.video.x3d import co_x3d_stepper

    return LiveVideo(co_x3d_stepper(variant, window, num_classes, weights, seed), size, size, top_k)
