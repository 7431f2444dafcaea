"""``--tokenizer`` / ``--tokenizer-option NAME.KEY=VALUE``: checked against each tokenizer's
constructor before anything heavy is imported.

Option values are Python literals (``jpeg.size=128``, ``semantic-audio.model_dir='/m'``; a
bare word stays a string). Keys and value types come from the constructor's signature, so a
misspelt key lists the valid ones and ``jpeg.size=abc`` says ``jpeg.size must be an integer``
instead of failing later inside the tokenizer.
"""

import ast
import inspect
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from operators.tokenizers.registry import DEFAULT_TOKENIZER_FOR_MODALITY, TOKENIZERS, tokenizer_class
from pipelines.common import ConfigError

_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "True or False"}


def csv(value: str) -> List[str]:
    """Comma-separated items, stripped, empty ones dropped."""
    return [v.strip() for v in value.split(",") if v.strip()]


def tokenizer_names(tokenizer: str, modalities: str) -> List[str]:
    """The tokenizers ``--tokenizer`` names; ``auto`` picks the default for each modality."""
    if tokenizer != "auto":
        names = csv(tokenizer)
        unknown = [n for n in names if n not in TOKENIZERS]
        if unknown or not names:
            raise ConfigError(f"--tokenizer {tokenizer!r}: unknown tokenizer {unknown}; choose from {sorted(TOKENIZERS)}")
        return names
    chosen = csv(modalities)
    unknown = [m for m in chosen if m not in DEFAULT_TOKENIZER_FOR_MODALITY]
    if unknown or not chosen:
        raise ConfigError(f"--modalities {modalities!r}: unknown modality {unknown}; "
                          f"choose from {sorted(DEFAULT_TOKENIZER_FOR_MODALITY)}")
    return [DEFAULT_TOKENIZER_FOR_MODALITY[m] for m in chosen]


def parse_options(values: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """``["jpeg.size=128"]`` → ``{"jpeg": {"size": 128}}`` (values as Python literals)."""
    options: Dict[str, Dict[str, Any]] = {}
    for option in values:
        target, sep, text = option.partition("=")
        name, dot, key = target.partition(".")
        if not sep or not dot or not name or not key:
            raise ConfigError(f"--tokenizer-option {option!r} must look like NAME.KEY=VALUE, e.g. jpeg.size=128")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        options.setdefault(name, {})[key] = value
    return options


def _expected_kind(param: inspect.Parameter) -> Any:
    annotation = param.annotation
    if annotation in _KIND_NAMES:
        return annotation
    if param.default is not inspect.Parameter.empty and param.default is not None:
        return type(param.default) if type(param.default) in _KIND_NAMES else None
    return None


def check_kwargs(name: str, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """Checks keys and value types of one tokenizer's options against its constructor.

    Returns:
        The options, ints widened to float where the constructor wants a float.
    """
    params = {
        p.name: p for p in inspect.signature(tokenizer_class(name).__init__).parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    checked: Dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in params:
            raise ConfigError(f"--tokenizer-option {name}.{key}: {name} has no option {key!r}; "
                              f"valid keys: {', '.join(sorted(params))}")
        kind = _expected_kind(params[key])
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise ConfigError(f"--tokenizer-option {name}.{key}={value!r}: {name}.{key} must be {_KIND_NAMES[kind]}")
        checked[key] = value
    return checked


def resolve(
    tokenizer: str, modalities: str, option_values: Sequence[str], budgets: Optional[Mapping[str, Any]] = None,
) -> List[Tuple[str, Dict[str, Any]]]:
    """``[(tokenizer name, checked options)]``, at most one per modality; builds each once
    (constructors are cheap and check value ranges) so a bad value fails before the run.

    Args:
        budgets: Budgets given with ``--budget`` (name → value); each goes to every tokenizer
            whose constructor takes an argument of that name (e.g. ``media_seconds``), unless
            ``--tokenizer-option`` sets it.
    """
    names = tokenizer_names(tokenizer, modalities)
    options = parse_options(option_values)
    unused = sorted(set(options) - set(names))
    if unused:
        raise ConfigError(f"--tokenizer-option names tokenizers not in use: {unused}; in use: {names}")
    seen: Dict[str, str] = {}
    resolved = []
    for name in names:
        cls = tokenizer_class(name)
        if cls.modality in seen:
            raise ConfigError(f"--tokenizer lists {seen[cls.modality]} and {name} for {cls.modality}; keep one per modality")
        seen[cls.modality] = name
        params = inspect.signature(cls.__init__).parameters
        given = {k: v for k, v in (budgets or {}).items() if k in params}
        kwargs = {**given, **check_kwargs(name, options.get(name, {}))}
        try:
            tokenizer = cls(**kwargs)
        except (TypeError, ValueError, OSError) as err:
            raise ConfigError(f"--tokenizer-option for {name!r} is invalid: {err}")
        files = [k for k in kwargs if k.endswith(("_dir", "_path"))]
        if files and isinstance(getattr(cls, "model", None), property):
            try:
                _ = tokenizer.model  # loaded once here, so a bad file fails now, not on every sample
            except Exception as err:  # any loader error means the files are unusable
                options_given = ", ".join(f"{name}.{k}={kwargs[k]!r}" for k in files)
                raise ConfigError(f"--tokenizer-option {options_given}: cannot load the model: "
                                  f"{type(err).__name__}: {str(err)[:300]}")
        resolved.append((name, kwargs))
    return resolved
