"""Live continual video: encoded frames in, per-frame predictions out, state as numpy (no Beam).

Wraps a :class:`operators.video.continual.StreamStepper` (e.g. CoX3D) in the
:class:`operators.streaming.engine.StreamEngine` contract, so one Beam DoFn serves live video
and live ASR. ``step`` advances every stream by its frame in one batched network step
(``StreamStepper.step_many``: the streams' numpy state trees are stacked into one batch and
split again), so video throughput grows with concurrency like ASR. A continual network holds
no frames back, so ``finalize`` has nothing to flush.

``decode`` reads the image header first and refuses an image over the ``frame_pixels`` budget
before decoding a pixel, so one huge frame cannot stall the other streams.
"""

import io
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from operators.streaming.engine import StreamEngine
from operators.tokenizers.base import MediaError
from operators.video.continual.stepper import StreamStepper
from schemas.budgets import DEFAULT_BUDGETS, BudgetExceeded

__all__ = ["LiveVideo", "FrameFormatError"]

State = Dict[str, object]
IMAGE_FORMATS = ("JPEG", "PNG")


class FrameFormatError(MediaError):
    """A payload that is not a decodable image, or one over the pixel budget."""


class LiveVideo(StreamEngine):
    """Per-stream live runner of a continual video network.

    Args:
        stepper: The single-stream continual network.
        width: Frames are resized to ``width`` × ``height`` before the network.
        height: See ``width``.
        top_k: Classes reported per prediction.
        max_pixels: Largest frame accepted (width × height, budget ``frame_pixels``).
    """

    event_name = "prediction"

    def __init__(self, stepper: StreamStepper, width: int, height: int, top_k: int = 5,
                 max_pixels: int = DEFAULT_BUDGETS.frame_pixels):
        self.stepper = stepper
        self.width, self.height, self.top_k = width, height, top_k
        self.max_pixels = max_pixels

    def init_state(self) -> State:
        return {"net": self.stepper.init_state(), "index": np.zeros((), np.int64)}

    def decode(self, kind: int, sample_rate: int, payload: bytes) -> Optional[np.ndarray]:
        """JPEG/PNG payload (kind 3) → ``[H, W, 3]`` uint8 at the configured size; kind 0
        without payload (a bare end-of-stream frame) → ``None``.

        Raises:
            FrameFormatError: Not a JPEG/PNG image, or over ``max_pixels`` (checked from the header).
        """
        if int(kind) == 0 and not payload:
            return None
        if int(kind) != 3:
            raise FrameFormatError(f"payload kind {kind} is not an encoded image (3): this is a video model; "
                                   "send video frames (`mediabeam send FILE.mp4`)")
        try:
            with warnings.catch_warnings():  # the budget below is the check; Pillow's warning is noise
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(payload), formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as err:
            raise FrameFormatError(str(BudgetExceeded("frame_pixels", self.max_pixels, str(err)))) from err
        except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad bytes
            raise FrameFormatError(f"payload is not a JPEG/PNG image ({type(err).__name__}: {err})") from err
        width, height = image.size
        if width * height > self.max_pixels:
            raise FrameFormatError(str(BudgetExceeded("frame_pixels", self.max_pixels,
                                                      f"the frame header declares {width}x{height} pixels")))
        try:
            image = image.convert("RGB")
        except Exception as err:  # noqa: BLE001 - truncated or corrupt image data
            raise FrameFormatError(f"payload is not a JPEG/PNG image ({type(err).__name__}: {err})") from err
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.BILINEAR)
        return np.array(image, dtype=np.uint8)

    def step(self, inputs: Sequence[Optional[np.ndarray]],
             states: Sequence[State]) -> Tuple[List[List[dict]], List[State]]:
        """Steps each stream's frame (``None``: no frame), all in one batched network step."""
        outputs: List[List[dict]] = [[] for _ in states]
        new_states = [dict(state) for state in states]
        rows = [i for i, frame in enumerate(inputs) if frame is not None]
        if not rows:
            return outputs, new_states
        values, nets = self.stepper.step_many([inputs[i] for i in rows], [states[i]["net"] for i in rows])
        for i, out, net in zip(rows, values, nets):
            state = new_states[i]
            index = int(state["index"])
            state["net"], state["index"] = net, np.asarray(index + 1, np.int64)
            if out is not None:
                flat = np.asarray(out, np.float32).ravel()
                top = np.argsort(-flat)[: self.top_k]
                outputs[i].append({
                    "frame_index": index,
                    "output_index": (index - self.stepper.delay) // self.stepper.stride,
                    "top_classes": [int(c) for c in top],
                    "top_scores": [round(float(flat[c]), 6) for c in top],
                })
        return outputs, new_states

    def finalize(self, state: State) -> List[dict]:
        """A continual network holds no frames back: nothing to flush."""
        return []


def live_co_x3d(variant: str = "s", window: int = 16, num_classes: int = 400, weights: Optional[str] = None,
                size: int = 160, top_k: int = 5, seed: int = 0,
                max_pixels: int = DEFAULT_BUDGETS.frame_pixels) -> LiveVideo:
    """A ``LiveVideo`` over CoX3D (``operators.video.co_x3d.co_x3d_stepper``) at ``size``×``size``."""
    from operators.video.co_x3d import co_x3d_stepper

    return LiveVideo(co_x3d_stepper(variant, window, num_classes, weights, seed), size, size, top_k, max_pixels)
