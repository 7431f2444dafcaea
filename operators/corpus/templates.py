"""Document templates: which parts of a sample a training document holds, and in what order.

A template lists part kinds (``text``, ``image``, ``video``, ``audio``) in document order.
Every part of a listed kind goes in, in member order; parts of kinds the template does not
list are appended in :data:`APPEND_ORDER` (``others: append``, the default, so nothing is
lost) or left out (``others: drop``). A sample missing a ``required`` kind is not kept
(a ``filtered`` row with the reason, never silently dropped).

Built-in templates (:data:`BUILTIN_TEMPLATES`) and the default for each modality mix when no
template is named (``auto``, :func:`auto_template`)::

    caption-then-image      text, image            default when the sample has an image
    image-then-caption      image, text
    video-with-audio        video, audio, text     default when it has a video
    audio-with-transcript   audio, text            default when it has audio only
    text-only               text                   default when it has text only

A user's own template is a small JSON or YAML file::

    name: narrated-video
    parts: [text, video, audio]
    required: [video]
    others: drop
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

PART_KINDS = ("text", "image", "video", "audio")
APPEND_ORDER = PART_KINDS
"""Order in which parts of kinds a template does not list are appended."""
AUTO = "auto"


class NotKept(Exception):
    """Raised when a sample is deliberately not made into a document; ``reason`` is counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Template:
    """A document template (see the module docstring).

    Attributes:
        name: Name recorded in every document row.
        parts: Part kinds in document order.
        required: Kinds a sample must have to be kept.
        others: ``append`` (parts of unlisted kinds go at the end) or ``drop``.
    """

    name: str
    parts: Tuple[str, ...]
    required: Tuple[str, ...] = ()
    others: str = "append"

    def __post_init__(self):
        unknown = sorted((set(self.parts) | set(self.required)) - set(PART_KINDS))
        if unknown:
            raise ValueError(f"template {self.name!r}: unknown part kinds {unknown}; use {list(PART_KINDS)}")
        if not self.parts or len(set(self.parts)) != len(self.parts):
            raise ValueError(f"template {self.name!r}: parts must list each kind once, e.g. [text, image]")
        if self.others not in ("append", "drop"):
            raise ValueError(f"template {self.name!r}: others must be 'append' or 'drop', not {self.others!r}")

    def arrange(self, parts: Sequence[Any]) -> List[Any]:
        """Orders ``parts`` (objects with a ``kind``) for a document; keeps member order within a kind.

        Raises:
            NotKept: If a required kind is missing.
        """
        kinds = {p.kind for p in parts}
        missing = [k for k in self.required if k not in kinds]
        if missing:
            raise NotKept(f"template {self.name}: no {missing[0]} part")
        order = list(self.parts)
        if self.others == "append":
            order += [k for k in APPEND_ORDER if k not in order]
        return [p for kind in order for p in parts if p.kind == kind]

    def to_json(self) -> Dict[str, Any]:
        """The template as a JSON object (the file format :func:`load_template` reads)."""
        return {"name": self.name, "parts": list(self.parts), "required": list(self.required), "others": self.others}

    @classmethod
    def from_json(cls, data: Dict[str, Any], default_name: str = "custom") -> "Template":
        """The inverse of :meth:`to_json` (``required`` and ``others`` may be left out).

        Raises:
            ValueError: If ``data`` is not a template object.
        """
        example = "e.g. {\"name\": \"mine\", \"parts\": [\"text\", \"image\"], \"required\": [\"image\"]}"
        if not isinstance(data, dict) or not isinstance(data.get("parts"), list):
            raise ValueError(f"a template is an object with a 'parts' list; {example}")
        extra = sorted(set(data) - {"name", "parts", "required", "others"})
        if extra:
            raise ValueError(f"unknown template fields {extra}; {example}")
        return cls(str(data.get("name") or default_name), tuple(map(str, data["parts"])),
                   tuple(map(str, data.get("required") or ())), str(data.get("others", "append")))


BUILTIN_TEMPLATES: Dict[str, Template] = {
    t.name: t for t in (
        Template("caption-then-image", ("text", "image")),
        Template("image-then-caption", ("image", "text")),
        Template("video-with-audio", ("video", "audio", "text")),
        Template("audio-with-transcript", ("audio", "text")),
        Template("text-only", ("text",)),
    )
}


def auto_template(kinds: Sequence[str]) -> Template:
    """The default template for a sample whose parts have ``kinds`` (see the module docstring)."""
    for kind, name in (("video", "video-with-audio"), ("image", "caption-then-image"),
                       ("audio", "audio-with-transcript")):
        if kind in kinds:
            return BUILTIN_TEMPLATES[name]
    return BUILTIN_TEMPLATES["text-only"]


def load_template(path: str) -> Template:
    """Reads a user template from a JSON or YAML file.

    Raises:
        ValueError: If the file is unreadable or not a template, saying what a template looks like.
    """
    try:
        with open(path) as f:
            text = f.read()
    except OSError as err:
        raise ValueError(f"cannot read template {path!r}: {err}") from err
    import yaml

    try:
        data = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    except (ValueError, yaml.YAMLError) as err:
        raise ValueError(f"template {path!r} is not valid JSON/YAML: {err}") from err
    try:
        return Template.from_json(data, os.path.splitext(os.path.basename(path))[0])
    except ValueError as err:
        raise ValueError(f"template {path!r}: {err}") from err


def resolve_template(value: str) -> Optional[Template]:
    """``--template``: ``auto`` (None: :func:`auto_template` per sample), a built-in name or a file.

    Raises:
        ValueError: If ``value`` is neither a built-in name nor a readable template file.
    """
    if value == AUTO:
        return None
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    if not os.path.isfile(value):
        raise ValueError(f"--template {value!r}: not a file; use auto, one of {sorted(BUILTIN_TEMPLATES)} "
                         f"or a JSON/YAML template file")
    return load_template(value)
