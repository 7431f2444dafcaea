"""Chooses where the VQ kernels run: the GPU when ``numba.cuda`` sees one, else the CPU."""

import functools

DEVICES = ("auto", "cpu", "cuda")


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    """True when a CUDA GPU and driver are usable (or the CUDA simulator is enabled)."""
    try:
        from numba import cuda
    except ImportError:
        return False
    return bool(cuda.is_available())


def resolve(device: str) -> str:
    """Maps ``"auto"`` to ``"cuda"`` or ``"cpu"``; rejects unknown names and missing GPUs."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise ValueError("device='cuda' but numba.cuda finds no GPU; use device='cpu' or 'auto'")
    return device
