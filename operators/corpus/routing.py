"""Which members of a sample are captions and which are media, by what they hold.

Captions come from text members (``.txt``, ``.caption``, ``.text``, also ``.en.txt`` ...) and
from the string fields ``caption``, ``text`` and ``transcript`` of ``.json`` members. Media
members are recognised by extension (``operators.tokenizers.base.MODALITY_EXTENSIONS``); a
video member's real streams are found when it is tokenized (see
``operators.corpus.documents``). Other members (metadata, ``.cls`` ...) are not document parts.
"""

import json
from typing import Dict, List, NamedTuple, Optional

from operators.tokenizers.base import MediaError, modality_of

CAPTION_EXTENSIONS = ("txt", "caption", "text")
CAPTION_FIELDS = ("caption", "text", "transcript")


class MediaMember(NamedTuple):
    """A member holding media: its modality by extension, extension and payload."""

    modality: str
    member: str
    payload: bytes


def _last(extension: str) -> str:
    return extension.rsplit(".", 1)[-1].lower()


class Caption(NamedTuple):
    """A caption: the member it came from, its JSON field (None for a text member), its text."""

    member: str
    field: Optional[str]
    text: str

    @property
    def where(self) -> str:
        """``txt`` for a text member, ``json.caption`` for a JSON field."""
        return self.member if self.field is None else f"{self.member}.{self.field}"


def captions(members: Dict[str, bytes]) -> List[Caption]:
    """Distinct, non-blank captions in a fixed order.

    Text members come first (by extension), then ``.json`` fields (by extension, then
    :data:`CAPTION_FIELDS` order). A text repeated in several places (a ``.txt`` and the
    ``.json`` caption) is kept once, at its first place.

    Raises:
        MediaError: If a text member is not UTF-8.
    """
    found: List[Caption] = []
    for ext in sorted(members):
        if _last(ext) in CAPTION_EXTENSIONS:
            try:
                found.append(Caption(ext, None, members[ext].decode("utf-8").strip()))
            except UnicodeDecodeError as err:
                raise MediaError(f"caption member .{ext} is not UTF-8 text ({err.reason} at byte {err.start})")
    for ext in sorted(members):
        if _last(ext) == "json":
            try:
                record = json.loads(members[ext])
            except ValueError:
                continue  # metadata that is not JSON holds no caption we can read
            if isinstance(record, dict):
                found += [Caption(ext, field, record[field].strip()) for field in CAPTION_FIELDS
                          if isinstance(record.get(field), str)]
    seen, distinct = set(), []
    for caption in found:
        if caption.text and caption.text not in seen:
            seen.add(caption.text)
            distinct.append(caption)
    return distinct


def media_members(members: Dict[str, bytes]) -> List[MediaMember]:
    """The sample's media members, by extension."""
    return [MediaMember(modality, ext, members[ext]) for ext in sorted(members)
            if (modality := modality_of(ext)) is not None]
