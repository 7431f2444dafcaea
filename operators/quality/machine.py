"""Machine-perceptual quality: does a downstream model decide the same on the decoded media?

Images: the split-computing model of ``compress-features`` (``TinyCNN``, 32×32 input, 8 classes,
trained on synthetic shapes) on the image the tokenizer saw and on its reconstruction, both
resized the way ``compress-features`` resizes its inputs. Video: X3D (``operators/video/x3d.py``) run offline on the whole clip: one score
vector per clip, whose top-1 class is compared between the clip the tokenizer saw and its
reconstruction. With seeded random weights (no checkpoint at hand) the agreement only says how
far decoding moves a fixed random network's decision, not a trained model's.
"""

import numpy as np
import torch
from PIL import Image

from operators.compression.split_compute import INPUT_SIZE
from operators.video.x3d import x3d_preprocess


MIN_FRAMES = 16
"""Clips shorter than X3D-M's training clip are padded by repeating their last frame, so the
head's temporal pooling fits every variant (a 2 s clip at AVC-LM's 3 fps has 6 frames)."""


def x3d_clip_scores(net: torch.nn.Module, frames: np.ndarray) -> np.ndarray:
    """Class scores ``[K]`` of an X3D network for a clip ``[N, H, W, 3]`` uint8 (N ≥ 1; see
    :data:`MIN_FRAMES`)."""
    if len(frames) < MIN_FRAMES:
        frames = np.concatenate([frames, np.repeat(frames[-1:], MIN_FRAMES - len(frames), axis=0)])
    with torch.inference_mode():
        clip = torch.stack([x3d_preprocess(frame) for frame in frames], dim=1).unsqueeze(0)
        return net(clip)[0].float().numpy()


def cnn_image_scores(net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Class scores ``[K]`` of ``TinyCNN`` for an ``[H, W, 3]`` uint8 image, resized (Pillow's
    default filter) to its 32×32 input in [0, 1], as ``compress-features`` feeds it."""
    small = np.asarray(Image.fromarray(image).resize((INPUT_SIZE, INPUT_SIZE)), np.float32) / 255.0
    with torch.inference_mode():
        return net(torch.from_numpy(small.transpose(2, 0, 1).copy())[None])[0].float().numpy()
