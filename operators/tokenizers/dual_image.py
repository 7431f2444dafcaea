"""Dual-codebook image tokens in the style of TokenFlow (arXiv 2412.03069).

An image is resized (shorter side) and center-cropped to ``size × size``, split into
``patch × patch`` RGB patches, and each patch gets ONE index shared by two aligned codebooks:

* a semantic codebook over patch features from a pluggable encoder (default: low-frequency
  2-D DCT per colour channel, no weights needed; plug-ins load from a local file), and
* a pixel codebook over the raw patch pixels (in [0, 1]).

The index minimises ``w_sem · ||s − S[k]||² / F_s + w_pix · ||p − P[k]||² / F_p`` (each term a
per-dimension mean). Scaling each part by ``sqrt(w / F)`` and concatenating turns this into one
nearest-centroid search, so the same fused kernel serves it and k-means on the concatenation
fits both codebooks at once. Decoding takes the pixel codewords; PSNR is reported per image.
A model is a folder (``model.json``, ``semantic.npy``, ``pixel.npy``); the default ships in
``operators/assets/dual_image``.
"""

import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

from operators.asset_paths import asset_path
from operators.kernels import nearest
from operators.media.image import decode_image
from operators.tokenizers.base import TokenOutput
from operators.tokenizers.encoders import PatchEncoder, encoder_from_spec
from operators.tokenizers.model_folder import load_array, load_model_info, model_version, save_model_folder

DEFAULT_MODEL_DIR = asset_path("dual_image")


def crop_square(image: Image.Image, size: int) -> np.ndarray:
    """Resize (shorter side) + center crop → ``[size, size, 3]`` float32 in [0, 1]."""
    fitted = ImageOps.fit(image.convert("RGB"), (size, size), Image.BICUBIC)
    return np.asarray(fitted, np.float32) / 255.0


def image_patches(pixels: np.ndarray, patch: int) -> np.ndarray:
    """``[H, W, 3]`` → ``[(H/p)·(W/p), p·p·3]`` row-major patches (row-major inside a patch)."""
    h, w, c = pixels.shape
    x = pixels.reshape(h // patch, patch, w // patch, patch, c).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(x.reshape(-1, patch * patch * c))


def assemble(patches: np.ndarray, size: int, patch: int) -> np.ndarray:
    """Inverse of :func:`image_patches` for a ``size × size`` RGB image."""
    g = size // patch
    x = patches.reshape(g, g, patch, patch, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(x.reshape(size, size, 3))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1]."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


class DualImageModel(NamedTuple):
    """Aligned codebooks ``semantic [K, F_s]`` and ``pixel [K, p·p·3]`` plus settings."""

    size: int
    patch: int
    semantic_weight: float
    pixel_weight: float
    encoder: PatchEncoder
    semantic: np.ndarray
    pixel: np.ndarray
    info: Dict[str, Any]


def joint_weights(dims: Tuple[int, int], semantic_weight: float, pixel_weight: float) -> Tuple[float, float]:
    """Per-part scales ``(sqrt(w_sem / F_s), sqrt(w_pix / F_p))`` for the concatenated search."""
    fs, fp = dims
    return math.sqrt(semantic_weight / fs), math.sqrt(pixel_weight / fp)


def joint_features(encoder: PatchEncoder, patches: np.ndarray, semantic_weight: float,
                   pixel_weight: float) -> np.ndarray:
    """``[sqrt(w_s/F_s)·encoder(p), sqrt(w_p/F_p)·p]``: what the shared index is searched on."""
    sem = np.asarray(encoder(patches), np.float32)
    a, b = joint_weights((sem.shape[1], patches.shape[1]), semantic_weight, pixel_weight)
    return np.concatenate([a * sem, b * patches], axis=1).astype(np.float32)


def split_joint(codebook: np.ndarray, semantic_dim: int, semantic_weight: float,
                pixel_weight: float) -> Tuple[np.ndarray, np.ndarray]:
    """Joint k-means centroids → (semantic codebook, pixel codebook) in their own units."""
    pixel_dim = codebook.shape[1] - semantic_dim
    a, b = joint_weights((semantic_dim, pixel_dim), semantic_weight, pixel_weight)
    return codebook[:, :semantic_dim] / a, codebook[:, semantic_dim:] / b


def save_model(directory: str, model: DualImageModel, float16: bool = False) -> None:
    """Writes ``model.json``, ``semantic.npy`` and ``pixel.npy`` (pixels in float16 if asked)."""
    info = {**model.info, "size": model.size, "patch": model.patch,
            "semantic_weight": model.semantic_weight, "pixel_weight": model.pixel_weight,
            "codebook_size": int(model.pixel.shape[0]), "encoder": model.encoder.spec}
    save_model_folder(directory, info, {
        "semantic": model.semantic.astype(np.float32),
        "pixel": model.pixel.astype(np.float16 if float16 else np.float32),
    })


def load_model(directory: str, encoder_path: Optional[str] = None) -> DualImageModel:
    """Reads a model folder; ``encoder_path`` overrides the encoder recorded in it."""
    info = load_model_info(directory, "dual-image", "image")
    encoder = encoder_from_spec(info["encoder"], encoder_path)
    return DualImageModel(int(info["size"]), int(info["patch"]), float(info["semantic_weight"]),
                          float(info["pixel_weight"]), encoder, load_array(directory, "semantic"),
                          load_array(directory, "pixel"), info)


class DualImageTokenizer:
    """Image → ``[(size/patch)²]`` shared semantic/pixel indices, and back to pixels.

    Args:
        model_dir: Model folder (default: the shipped ``assets/dual_image``).
        encoder_path: Plug-in semantic encoder file (its features must match the codebook).
        semantic_weight: Overrides the model's weight of the semantic distance.
        pixel_weight: Overrides the model's weight of the pixel distance.
        max_pixels: Largest source image accepted (checked before decoding).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the VQ kernel.
    """

    name = "dual-image"
    modality = "image"

    def __init__(self, model_dir: Optional[str] = None, encoder_path: Optional[str] = None,
                 semantic_weight: Optional[float] = None, pixel_weight: Optional[float] = None,
                 max_pixels: int = 64_000_000, device: str = "auto"):
        self.model_dir = model_dir or DEFAULT_MODEL_DIR
        self.encoder_path = encoder_path
        self.semantic_weight = semantic_weight
        self.pixel_weight = pixel_weight
        self.max_pixels = max_pixels
        self.device = device
        self._model: Optional[DualImageModel] = None
        self._joint: Optional[nearest.PackedCodebook] = None
        self._version: Optional[str] = None

    @property
    def version(self) -> str:
        """Content hash of the model folder (and plug-in encoder) plus the distance weights in use."""
        if self._version is None:
            weights = "" if self.semantic_weight is None and self.pixel_weight is None else \
                f"-w{self.semantic_weight}-{self.pixel_weight}"
            self._version = model_version(self.model_dir, (self.encoder_path,)) + weights
        return self._version

    def codebook_sizes(self) -> Tuple[int, ...]:
        """The one shared codebook's size, from ``model.json`` (no weights loaded)."""
        return (int(load_model_info(self.model_dir, "dual-image", "image")["codebook_size"]),)

    @property
    def model(self) -> DualImageModel:
        """The model, loaded on first use (constructors stay cheap)."""
        if self._model is None:
            m = load_model(self.model_dir, self.encoder_path)
            m = m._replace(semantic_weight=self.semantic_weight if self.semantic_weight is not None
                           else m.semantic_weight,
                           pixel_weight=self.pixel_weight if self.pixel_weight is not None
                           else m.pixel_weight)
            a, b = joint_weights((m.semantic.shape[1], m.pixel.shape[1]), m.semantic_weight, m.pixel_weight)
            self._joint = nearest.PackedCodebook(np.concatenate([a * m.semantic, b * m.pixel], axis=1))
            self._model = m
        return self._model

    def encode_pixels(self, pixels: np.ndarray) -> TokenOutput:
        """Tokenizes a ``[size, size, 3]`` float image in [0, 1]."""
        m = self.model
        patches = image_patches(pixels, m.patch)
        feats = joint_features(m.encoder, patches, m.semantic_weight, m.pixel_weight)
        idx, _ = nearest.nearest(feats, self._joint, device=self.device)
        recon = assemble(m.pixel[idx], m.size, m.patch)
        bits = math.log2(m.pixel.shape[0]) * len(idx)
        return TokenOutput(idx, {"width": m.size, "height": m.size, "psnr_db": psnr(pixels, recon),
                                 "bits_per_image": bits})

    def encode(self, data: bytes) -> TokenOutput:
        """Tokenizes one encoded image; raises ``MediaError`` on bad input."""
        image = decode_image(data, self.max_pixels)
        out = self.encode_pixels(crop_square(image, self.model.size))
        return TokenOutput(out.tokens, {**out.meta, "source_width": image.width,
                                        "source_height": image.height})

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens → ``[size, size, 3]`` uint8 image from the pixel codebook."""
        m = self.model
        pixels = assemble(m.pixel[np.asarray(tokens, np.int64).reshape(-1)], m.size, m.patch)
        return (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)
