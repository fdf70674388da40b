"""Plate normalization and the one table of OCR confusions the hotlist matches through.

A plate is compared in its *normalized* form: upper case, separators (space, dash, dot, ...)
removed, only A-Z and 0-9 kept. Two plates are *confusable* when their *skeletons* are equal:
the skeleton replaces each character by the first character of its confusion group below.

CONFUSION_GROUPS is the single documented table; matching, importing and the MDT all go
through it. Groups are transitive on purpose (0 ~ O ~ D ~ Q), because OCR confusions chain.

    0 O D Q    round shapes
    1 I L T    vertical strokes
    2 Z
    5 S
    8 B
    6 G

The skeleton is also encoded as an integer (`skeleton_code`): each skeleton class is a digit
1..N (never 0, so strings of different lengths never share a code) in base 36, which lets a
plate of up to MAX_PLATE_LEN characters (and a read one longer) fit a signed 64-bit integer and
lets a whole family of one-character insertions be computed arithmetically (`probe_codes`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

CONFUSION_GROUPS: tuple[str, ...] = ("0ODQ", "1ILT", "2Z", "5S", "8B", "6G")
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_PLATE_LEN = 10  # NCIC's plate field is 10 characters wide
SKELETON_VERSION = 1  # bump when CONFUSION_GROUPS changes: stored codes must be recomputed

_SEPARATORS = " -.·_/\t"


def _build_tables() -> tuple[dict[int, str], dict[int, str], int]:
    representative: dict[str, str] = {c: c for c in ALPHABET}
    for group in CONFUSION_GROUPS:
        for c in group:
            representative[c] = group[0]
    classes = sorted(set(representative.values()), key=ALPHABET.index)
    digits = "123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if len(classes) > len(digits):
        raise RuntimeError("too many skeleton classes for a base-36 code")
    class_digit = {cls: digits[i] for i, cls in enumerate(classes)}
    skeleton_table = str.maketrans({c: representative[c] for c in ALPHABET})
    code_table = str.maketrans({c: class_digit[representative[c]] for c in ALPHABET})
    return skeleton_table, code_table, len(classes)


_SKELETON_TABLE, _CODE_TABLE, CLASS_COUNT = _build_tables()
_DROP_SEPARATORS = str.maketrans("", "", _SEPARATORS)
_VALID = re.compile(rf"[A-Z0-9]{{1,{MAX_PLATE_LEN}}}")
_NOT_ALNUM = re.compile(r"[^A-Z0-9]")
_POW36 = np.array([36**k for k in range(MAX_PLATE_LEN + 3)], dtype=np.int64)
_CLASS_DIGITS = np.arange(1, CLASS_COUNT + 1, dtype=np.int64)


def normalize_plate(text: str) -> str:
    """Upper case, separators removed. May still contain characters outside A-Z0-9."""
    return text.upper().translate(_DROP_SEPARATORS)


def normalize_read(text: str) -> str:
    """A read's text reduced to A-Z0-9 (OCR output may carry stray symbols)."""
    return _NOT_ALNUM.sub("", normalize_plate(text))


def is_valid_plate(plate: str) -> bool:
    """A normalized plate a hotlist entry may hold: 1..MAX_PLATE_LEN characters of A-Z0-9."""
    return _VALID.fullmatch(plate) is not None


def skeleton(plate: str) -> str:
    """Each character replaced by its confusion group's first character."""
    return plate.translate(_SKELETON_TABLE)


def skeleton_code(plate: str) -> int:
    """The skeleton of a normalized, valid plate as an integer (see the module docstring)."""
    return int(plate.translate(_CODE_TABLE), 36)


def _class_digits(plate: str) -> list[int]:
    return [int(c, 36) for c in plate.translate(_CODE_TABLE)]


def probe_codes(plate: str, *, approximate: bool = True) -> np.ndarray:
    """Skeleton codes an entry may have to match the normalized read `plate`.

    The read's own skeleton (exact and confusion matches); with `approximate`, also the read
    with one character removed (the read has an extra character) and the read with one
    character of any class inserted anywhere (the read misses a character).
    """
    if not plate or len(plate) > MAX_PLATE_LEN + 1:
        return np.empty(0, dtype=np.int64)
    digits = _class_digits(plate)
    n = len(digits)
    out: list[np.ndarray] = []
    if n <= MAX_PLATE_LEN:
        out.append(np.array([skeleton_code(plate)], dtype=np.int64))
    if approximate:
        # prefix value of digits[:i] and suffix value of digits[i:] for every split point i
        prefix = [0] * (n + 1)
        for i, d in enumerate(digits):
            prefix[i + 1] = prefix[i] * 36 + d
        suffix = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            suffix[i] = suffix[i + 1] + digits[i] * 36 ** (n - 1 - i)
        if n >= 2:
            deletions = [prefix[i] * 36 ** (n - 1 - i) + suffix[i + 1] for i in range(n)]
            out.append(np.array(deletions, dtype=np.int64))
        if n + 1 <= MAX_PLATE_LEN:
            pre = np.array(prefix, dtype=np.int64)
            suf = np.array(suffix, dtype=np.int64)
            tail_len = np.arange(n, -1, -1)  # digits after the inserted one, for each split i
            base = pre * _POW36[tail_len + 1] + suf
            inserted = base[:, None] + _CLASS_DIGITS[None, :] * _POW36[tail_len][:, None]
            out.append(inserted.ravel())
    return np.unique(np.concatenate(out)) if out else np.empty(0, dtype=np.int64)


EditOp = Literal["substitute", "missing", "extra"]


@dataclass(frozen=True)
class Edit:
    """One difference between a read and an entry.

    substitute: read[read_index] was read where the entry has entry[entry_index].
    missing: the read lacks entry[entry_index]; read_index is where it would go in the read.
    extra: read[read_index] is not in the entry; entry_index is where it would go in the entry.
    """

    op: EditOp
    read_index: int
    entry_index: int
    read_char: str
    entry_char: str


def _substitutions(read: str, entry: str, read_offset: int, entry_offset: int) -> list[Edit]:
    return [
        Edit("substitute", read_offset + i, entry_offset + i, r, e)
        for i, (r, e) in enumerate(zip(read, entry, strict=True))
        if r != e
    ]


def align(read: str, entry: str) -> tuple[Edit, ...] | None:
    """The edits turning the entry into the read, when they are confusable or one indel apart.

    Returns None when the two are not related by the rules `probe_codes` searches. Among
    several possible indel positions the one leaving the fewest substitutions wins.
    """
    if len(read) == len(entry):
        if skeleton(read) != skeleton(entry):
            return None
        return tuple(_substitutions(read, entry, 0, 0))
    if abs(len(read) - len(entry)) != 1:
        return None
    read_longer = len(read) > len(entry)
    longer, shorter = (read, entry) if read_longer else (entry, read)
    short_skel = skeleton(shorter)
    best: tuple[Edit, ...] | None = None
    for i in range(len(longer)):
        rest = longer[:i] + longer[i + 1 :]
        if skeleton(rest) != short_skel:
            continue
        if read_longer:
            indel = Edit("extra", i, i, read[i], "")
            subs = _substitutions(rest, entry, 0, 0)
        else:
            indel = Edit("missing", i, i, "", entry[i])
            subs = _substitutions(read, rest, 0, 0)
        # indices in `rest` past the indel shift by one in the longer string
        fixed = [
            Edit(
                s.op,
                s.read_index + (1 if read_longer and s.read_index >= i else 0),
                s.entry_index + (1 if not read_longer and s.entry_index >= i else 0),
                s.read_char,
                s.entry_char,
            )
            for s in subs
        ]
        candidate = tuple(sorted([indel, *fixed], key=lambda e: (e.read_index, e.entry_index)))
        if best is None or len(candidate) < len(best):
            best = candidate
    return best
