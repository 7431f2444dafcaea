"""What the Numba kernels are compiled for, and which kernel path that selects (chosen once).

Numba compiles for the host CPU unless ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` say otherwise.
Note that ``NUMBA_CPU_NAME`` alone does not narrow anything: Numba then still passes the host's
feature list to LLVM, so an AVX-512 host keeps emitting AVX-512. ``compile_features`` therefore
reads the feature string Numba hands to LLVM (``NUMBA_CPU_FEATURES`` when set, else the host's),
and only its ``+feature`` entries count; a path is chosen only when every instruction it emits
is listed there, so an incomplete list can make the choice slower, never invalid.

ISA paths (``isa_path``), best first:

* ``avx512_vnni``: int8 filter on zmm ``vpdpbusd`` (64 multiply-adds per instruction).
* ``avx_vnni``: int8 filter on ymm ``vpdpbusd`` (VEX-encoded AVX-VNNI, e.g. Alder Lake,
  Sierra Forest).
* ``avx2``: int8 filter on ymm ``vpmaddubsw`` + ``vpmaddwd`` (AVX2 + FMA, e.g. Haswell and later,
  AMD Zen 1-3); also taken on AVX-512 CPUs without VNNI (Skylake-SP).
* ``other``: the float32 register-tiled kernel, on the widest tile the target has (ymm with
  FMA, ymm without, xmm).

``AVX2_EMULATION`` and ``AVX_VNNI_EMULATION`` are the environment that makes a process on a
bigger host compile and load only what such a host has (Numba, faiss, OpenBLAS, numpy, torch).
"""

import functools
import os
import sys
from typing import Dict, FrozenSet

import numba
from llvmlite import binding as llvm_binding

ISA_PATHS = ("avx512_vnni", "avx_vnni", "avx2", "other")
_REQUIRES = {  # LLVM features each int8 path emits
    "avx512_vnni": {"avx512f", "avx512bw", "avx512vnni", "fma"},
    "avx_vnni": {"avx2", "avxvnni", "fma"},
    "avx2": {"avx2", "fma"},
}
_HASWELL = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fsgsbase,+fxsr,+invpcid,+lzcnt,+mmx,"
            "+movbe,+pclmul,+popcnt,+rdrnd,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,+xsaveopt")
_LIBRARIES_AVX2 = {
    "FAISS_OPT_LEVEL": "avx2",  # faiss builds with one library per level
    "FAISS_SIMD_LEVEL": "AVX2",  # faiss >= 1.12 builds with dynamic dispatch
    "OPENBLAS_CORETYPE": "Haswell",  # the sgemm behind faiss IndexFlatL2 and numpy
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
}
AVX2_EMULATION: Dict[str, str] = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": _HASWELL, **_LIBRARIES_AVX2}
AVX_VNNI_EMULATION: Dict[str, str] = {
    "NUMBA_CPU_NAME": "alderlake", "NUMBA_CPU_FEATURES": _HASWELL + ",+avxvnni,+adx,+clflushopt,+sha",
    **_LIBRARIES_AVX2,
}


@functools.lru_cache(maxsize=None)
def compile_features() -> FrozenSet[str]:
    """LLVM features (without the ``+``) that Numba compiles for in this process."""
    if numba.config.CPU_FEATURES is not None:
        spec = numba.config.CPU_FEATURES
    else:
        spec = llvm_binding.get_host_cpu_features().flatten()
    return frozenset(f[1:] for f in spec.split(",") if f.startswith("+"))


def select_path(features: FrozenSet[str]) -> str:
    """The best ISA path whose instructions are all in ``features`` (``"other"`` if none)."""
    for path, needed in _REQUIRES.items():
        if needed <= features:
            return path
    return "other"


def supports(path: str) -> bool:
    """True when this process's Numba target can run the int8 ``path`` (``"other"``: always)."""
    if path not in ISA_PATHS:
        raise ValueError(f"ISA path must be one of {ISA_PATHS}, got {path!r}")
    return path == "other" or _REQUIRES[path] <= compile_features()


@functools.lru_cache(maxsize=None)
def isa_path() -> str:
    """The ISA path of this process (decided once, from ``compile_features``)."""
    return select_path(compile_features())


def host_flags() -> FrozenSet[str]:
    """CPU flags of the physical host from ``/proc/cpuinfo`` (empty where it is unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def host_class(flags: FrozenSet[str]) -> str:
    """The ISA path the physical host could run, from its ``/proc/cpuinfo`` flags."""
    if {"avx512f", "avx512bw", "avx512_vnni", "fma"} <= flags:
        return "avx512_vnni"
    if {"avx2", "avx_vnni", "fma"} <= flags:
        return "avx_vnni"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "other"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def reexec_with(env: Dict[str, str]) -> None:
    """Restarts this Python process with ``env`` added, unless it is already set.

    Numba, faiss, OpenBLAS, numpy and torch read these variables only at start-up, so a benchmark
    asked to emulate a smaller host (``AVX2_EMULATION``) has to start again under them.
    """
    if any(os.environ.get(k) != v for k, v in env.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})


def report() -> Dict[str, object]:
    """What the kernels run on: ``isa_path``, the host class and CPU, and how Numba was configured.

    ``emulated`` is True when the path differs from what the host could run, i.e. the process was
    narrowed with ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` (``AVX2_EMULATION``).
    """
    host = host_class(host_flags())
    return {
        "isa_path": isa_path(),
        "host_class": host,
        "host_cpu": _cpu_model(),
        "emulated": isa_path() != host,
        "numba_cpu_name": numba.config.CPU_NAME or llvm_binding.get_host_cpu_name(),
        "numba_cpu_features": "host" if numba.config.CPU_FEATURES is None else numba.config.CPU_FEATURES,
        "library_env": {k: os.environ[k] for k in _LIBRARIES_AVX2 if k in os.environ},
    }
