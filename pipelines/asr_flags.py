"""ASR flags shared by the jobs that run the recogniser (transcribe, live-asr, evaluate-tokenizers).

Standard library only at import time, so a flag mistake is reported fast.
"""

import os
from typing import Optional, Tuple

from pipelines.common import ConfigError


def parse_context(value: Optional[str]) -> Optional[Tuple[int, int]]:
    """``--att-context "70,13"`` → ``(70, 13)``; ``None`` stays ``None`` (the model's default)."""
    if value is None:
        return None
    try:
        left, right = (int(part) for part in value.split(","))
    except ValueError:
        raise ConfigError(f"--att-context {value!r} must look like 70,13 (left,right frames of 80 ms)")
    return left, right


def check_asr_model(path: Optional[str], flag: str = "--model", context: Optional[Tuple[int, int]] = None,
                    decoder: Optional[str] = None, alternative: str = "") -> str:
    """Loads the recogniser once, so a missing or bad file, context or decoder fails before the
    pipeline starts; returns the model's path (the embedded model when ``path`` is None).

    Args:
        path: The ``.nemo`` file given, or None for the embedded model.
        flag: The flag that named it, for the message.
        context: Attention context ``(left, right)`` to check, or None for the model's default.
        decoder: Decoder to check (``ctc``/``rnnt``), or None for the model's default.
        alternative: Another way out for the message, e.g. ``" or use --no-asr"``.
    """
    from operators.asr.nemo_checkpoint import EMBEDDED_MODEL, load_nemo

    model = path or EMBEDDED_MODEL
    if not os.path.isfile(model):
        raise ConfigError(f"{flag} {model!r} does not exist; pass a .nemo file{alternative}")
    try:
        load_nemo(model, context, decoder)
    except Exception as err:  # noqa: BLE001 - any model the operator cannot load is a configuration error
        raise ConfigError(
            f"{flag} {model!r} cannot be used with --att-context {context} --decoder {decoder}: {str(err)[:300]}; "
            f"pass a NeMo FastConformer .nemo checkpoint and a context/decoder it supports{alternative}"
        )
    return model
