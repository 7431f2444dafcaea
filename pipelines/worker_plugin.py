"""Imported by every SDK worker at start-up (Beam's ``--beam_plugins``): keeps torch out of
workers whose job does not use it.

Beam 2.77's ``apache_beam.ml.inference.base`` (``RunInference``) imports
``apache_beam.ml.inference.model_manager`` at module level, and that module imports torch
and SciPy, although only ``RunInference(..., use_model_manager=True)`` uses it; ``base``
already copes with the module missing (its import is in a ``try`` and the one code path
that needs it imports it on first use; the ``except`` also drops the stdlib ``resource``
module, which is put back). Measured here, that import costs each worker
process ~1.2 s of CPU at start-up, ~0.3 s more when it exits (the runner stops workers
one after the other) and ~230 MB of memory, for every job, including the codec tokenizers
(JPEG, AVC, Opus) that never touch torch.

Importing this module first imports ``base`` with ``model_manager`` held back, then lets
it be imported normally again. Tokenizers that need torch still import it themselves,
and ``use_model_manager=True`` still works. ``pipelines.common.create_pipeline`` adds this
module to ``--beam_plugins`` of every job it creates, on every runner.
"""

import sys

RUN_INFERENCE_MODULE = "apache_beam.ml.inference.base"
MODEL_MANAGER_MODULE = "apache_beam.ml.inference.model_manager"


def import_run_inference_without_torch() -> bool:
    """Imports Beam's RunInference module without its eager torch import, once per process.

    Returns:
        True if RunInference is now imported and torch is not (False when something else
        imported either of them first, in which case nothing is changed).
    """
    if RUN_INFERENCE_MODULE in sys.modules or MODEL_MANAGER_MODULE in sys.modules:
        return False
    sys.modules[MODEL_MANAGER_MODULE] = None  # makes ``import model_manager`` raise ImportError
    try:
        import apache_beam.ml.inference.base as run_inference
    finally:
        if MODEL_MANAGER_MODULE in sys.modules and sys.modules[MODEL_MANAGER_MODULE] is None:
            del sys.modules[MODEL_MANAGER_MODULE]
    if getattr(run_inference, "resource", False) is None:  # the same ``except`` dropped it too
        import resource

        run_inference.resource = resource  # RunInference's memory metric reads it
    return "torch" not in sys.modules


import_run_inference_without_torch()
