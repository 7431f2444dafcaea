"""One global vocabulary for a whole corpus: special tokens, then one id range per tokenizer.

Layout (written once as ``<output>/__vocab.json``)::

    0 pad, 1 bos, 2 eos, 3 <text>, 4 </text>, 5 <image>, 6 </image>, 7 <video>, 8 </video>,
    9 <audio>, 10 </audio>,
    then the text tokenizer's range, then one range per media tokenizer (image, video, audio).

A range is the concatenation of its tokenizer's codebooks: a multi-codebook token frame
``[T, C]`` (e.g. semantic-audio's ``[T, 1 + n_acoustic]``) is flattened frame-major and column
``c`` is shifted by the codebook offset ``offsets[c]`` (the sizes of the codebooks before it).
Byte-framed codec tokenizers (jpeg, avc, opus: tokens ``[BOS, *bytes, EOS]`` in their own 258
ids) keep only their payload bytes: the document's modality markers replace their wrappers.

A document is ``bos, (<kind> part </kind>)*, eos``. Content ids never fall among the special
ids, so :meth:`Vocabulary.split` finds every part by its markers alone.
"""

import dataclasses
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from operators.tokenizers.byte_tokens import bytes_to_tokens, tokens_to_bytes

KINDS = ("text", "image", "video", "audio")
"""Part kinds, in the order their ranges (and markers) are laid out."""
SPECIAL_NAMES = ("pad", "bos", "eos") + tuple(m for k in KINDS for m in (f"<{k}>", f"</{k}>"))
FRAMINGS = ("text", "bytes", "codes")
VOCAB_FORMAT = "mediabeam-vocab/1"


class MalformedDocument(ValueError):
    """Raised when token ids are not a document of this vocabulary."""


@dataclasses.dataclass(frozen=True)
class TokenRange:
    """The ids of one tokenizer in the global vocabulary.

    Attributes:
        kind: Part kind it serves (``text``, ``image``, ``video``, ``audio``).
        tokenizer: Tokenizer name (``jpeg-lm``, ``semantic-audio``, ``utf8-bytes`` ...).
        version: Tokenizer version (pins the meaning of its ids).
        start: First global id.
        codebooks: Size of each codebook (one for text and byte tokens).
        framing: ``text`` (ids as is), ``bytes`` (payload bytes of a ``[BOS, *bytes, EOS]``
            codec stream) or ``codes`` (``[T]`` or ``[T, C]`` codebook indices).
    """

    kind: str
    tokenizer: str
    version: str
    start: int
    codebooks: Tuple[int, ...]
    framing: str

    @property
    def size(self) -> int:
        """Ids in the range."""
        return int(sum(self.codebooks))

    @property
    def offsets(self) -> np.ndarray:
        """Offset of each codebook inside the range."""
        return np.concatenate([[0], np.cumsum(self.codebooks[:-1])]).astype(np.int64)

    def to_global(self, tokens: np.ndarray) -> np.ndarray:
        """Tokenizer ids → global ids (flat int32).

        Raises:
            ValueError: If an id is outside its codebook.
        """
        if self.framing == "bytes":
            return (np.frombuffer(tokens_to_bytes(tokens), np.uint8).astype(np.int32) + self.start)
        frames = np.asarray(tokens, np.int64).reshape(-1, len(self.codebooks))
        if frames.size and ((frames < 0).any() or (frames >= np.asarray(self.codebooks)).any()):
            raise ValueError(f"{self.tokenizer} ids outside its codebooks {list(self.codebooks)}")
        return (frames + self.offsets + self.start).reshape(-1).astype(np.int32)

    def from_global(self, ids: np.ndarray) -> np.ndarray:
        """Global ids → the tokenizer's own tokens (``[BOS, *bytes, EOS]``, ``[T]`` or ``[T, C]``).

        Raises:
            MalformedDocument: If the ids do not belong to this range in frame-major order.
        """
        local = np.asarray(ids, np.int64) - self.start
        width = len(self.codebooks)
        if local.size % width:
            raise MalformedDocument(f"{local.size} {self.tokenizer} ids are not whole frames of {width}")
        frames = local.reshape(-1, width) - self.offsets
        if frames.size and ((frames < 0).any() or (frames >= np.asarray(self.codebooks)).any()):
            raise MalformedDocument(f"ids outside the {self.kind} range of {self.tokenizer} (or out of frame order)")
        if self.framing == "bytes":
            return bytes_to_tokens(frames.astype(np.uint8).tobytes())
        return frames.reshape(-1).astype(np.int64) if width == 1 else frames

    def to_json(self) -> Dict[str, Any]:
        """The range as ``__vocab.json`` records it."""
        return {"kind": self.kind, "tokenizer": self.tokenizer, "version": self.version, "start": self.start,
                "end": self.start + self.size, "size": self.size, "codebooks": list(self.codebooks),
                "offsets": [int(o) for o in self.offsets], "framing": self.framing}


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Special ids and one :class:`TokenRange` per part kind in use (see the module docstring)."""

    ranges: Tuple[TokenRange, ...]

    @property
    def specials(self) -> Dict[str, int]:
        """Special token name → id."""
        return {name: i for i, name in enumerate(SPECIAL_NAMES)}

    @property
    def size(self) -> int:
        """Total ids (specials and every range)."""
        return len(SPECIAL_NAMES) + sum(r.size for r in self.ranges)

    def range_for(self, kind: str) -> TokenRange:
        """The range serving ``kind``.

        Raises:
            KeyError: If no tokenizer of that kind is in the vocabulary.
        """
        for token_range in self.ranges:
            if token_range.kind == kind:
                return token_range
        raise KeyError(f"no {kind} tokenizer in this vocabulary (kinds: {[r.kind for r in self.ranges]})")

    def document(self, parts: Sequence[Tuple[str, np.ndarray]]) -> np.ndarray:
        """``[(kind, tokenizer tokens)]`` → the document's global ids (int32)."""
        return self.wrap([(kind, self.range_for(kind).to_global(tokens)) for kind, tokens in parts])

    def wrap(self, parts: Sequence[Tuple[str, np.ndarray]]) -> np.ndarray:
        """``[(kind, global ids)]`` → ``bos, (<kind> ids </kind>)*, eos`` (int32)."""
        ids = self.specials
        chunks: List[np.ndarray] = [np.array([ids["bos"]], np.int32)]
        for kind, part in parts:
            chunks += [np.array([ids[f"<{kind}>"]], np.int32), np.asarray(part, np.int32),
                       np.array([ids[f"</{kind}>"]], np.int32)]
        chunks.append(np.array([ids["eos"]], np.int32))
        return np.concatenate(chunks)

    def split(self, ids: np.ndarray) -> List[Tuple[str, np.ndarray]]:
        """The inverse of :meth:`document`: ``[(kind, tokenizer tokens)]``.

        Raises:
            MalformedDocument: If ``ids`` is not ``bos, (<kind> ... </kind>)*, eos`` of this vocabulary.
        """
        ids = np.asarray(ids, np.int64).reshape(-1)
        specials = self.specials
        if ids.size < 2 or ids[0] != specials["bos"] or ids[-1] != specials["eos"]:
            raise MalformedDocument("a document starts with bos and ends with eos")
        if ids.min() < 0 or ids.max() >= self.size:
            raise MalformedDocument(f"ids outside the vocabulary of {self.size}")
        marks = np.flatnonzero(ids < len(SPECIAL_NAMES))[1:-1]
        if marks.size % 2:
            raise MalformedDocument("unbalanced part markers")
        parts = []
        for open_at, close_at in marks.reshape(-1, 2):
            opener, closer = SPECIAL_NAMES[ids[open_at]], SPECIAL_NAMES[ids[close_at]]
            if not (opener.startswith("<") and not opener.startswith("</") and closer == "</" + opener[1:]):
                raise MalformedDocument(f"part opened with {opener} closed with {closer}")
            kind = opener[1:-1]
            parts.append((kind, self.range_for(kind).from_global(ids[open_at + 1 : close_at])))
        expected_gaps = np.concatenate([[0], marks, [ids.size - 1]])
        if marks.size and (np.diff(expected_gaps)[::2] != 1).any():
            raise MalformedDocument("tokens between parts")
        if not marks.size and ids.size != 2:
            raise MalformedDocument("tokens outside any part")
        return parts

    def to_json(self) -> Dict[str, Any]:
        """``__vocab.json``: size, specials, ranges by kind, tokenizers and the document layout."""
        return {
            "format": VOCAB_FORMAT,
            "size": self.size,
            "specials": self.specials,
            "ranges": {r.kind: r.to_json() for r in self.ranges},
            "tokenizers": {r.tokenizer: r.version for r in self.ranges},
            "document": "bos, then per part <kind> ids </kind>, then eos; multi-codebook frames are "
                        "flattened frame-major, codebook c shifted by offsets[c]",
        }

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Vocabulary":
        """Reads :meth:`to_json`'s output back.

        Raises:
            ValueError: If ``data`` is not a vocabulary of this format.
        """
        if data.get("format") != VOCAB_FORMAT:
            raise ValueError(f"not a {VOCAB_FORMAT} vocabulary (format {data.get('format')!r})")
        ranges = tuple(TokenRange(r["kind"], r["tokenizer"], r["version"], int(r["start"]),
                                  tuple(int(c) for c in r["codebooks"]), r["framing"])
                       for r in sorted(data["ranges"].values(), key=lambda r: r["start"]))
        return cls(ranges)


def token_space(tokenizer: Any) -> Tuple[Tuple[int, ...], str]:
    """``(codebook sizes, framing)`` of a media tokenizer.

    Byte-framed codec tokenizers declare ``framing = "bytes"``; learned ones report
    ``codebook_sizes()`` (read from the model's settings, without loading weights).
    """
    if getattr(tokenizer, "framing", None) == "bytes":
        return (256,), "bytes"
    return tuple(int(c) for c in tokenizer.codebook_sizes()), "codes"


def build_vocabulary(text_tokenizer: Any, media_tokenizers: Sequence[Any]) -> Vocabulary:
    """The vocabulary of a text tokenizer and media tokenizers (at most one per modality).

    Ranges follow :data:`KINDS` order, so the same tokenizers always give the same ids.

    Raises:
        ValueError: If two tokenizers serve the same modality.
    """
    by_kind = {"text": (text_tokenizer, (int(text_tokenizer.size),), "text")}
    for tokenizer in media_tokenizers:
        if tokenizer.modality in by_kind:
            raise ValueError(f"two tokenizers for {tokenizer.modality}; keep one per modality")
        by_kind[tokenizer.modality] = (tokenizer, *token_space(tokenizer))
    ranges, start = [], len(SPECIAL_NAMES)
    for kind in KINDS:
        if kind in by_kind:
            tokenizer, codebooks, framing = by_kind[kind]
            ranges.append(TokenRange(kind, tokenizer.name, str(tokenizer.version), start, codebooks, framing))
            start += ranges[-1].size
    return Vocabulary(tuple(ranges))
