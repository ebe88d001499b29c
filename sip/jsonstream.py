"""Walk a JSON object member by member, and chosen array members element by element.

`json.loads` of a dialog snapshot with 100,000 calls in progress builds every row at once
(~150 MB of lists and strings next to the tracker being rebuilt from them) and leaves the heap
fragmented: a restarted daemon sat at 370 MB where the one it replaced used 165 MB
(bench/active.py --restart kill). Decoding one element at a time with the C scanner
(`JSONDecoder.raw_decode`) keeps only the element in hand, so each row is freed before the
next is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

_DECODER = json.JSONDecoder()
_WHITESPACE = frozenset(" \t\n\r")


class Member(NamedTuple):
    """One member of the object, or one element of a streamed array member."""

    name: str
    value: Any
    element: bool  # True: `value` is one element of the array member `name`


def members(text: str, streamed: frozenset[str]) -> Iterator[Member]:
    """The top-level object's members in document order.

    A member whose name is in `streamed` and whose value is an array is yielded once per
    element (`element=True`); every other member once, whole. Raises `ValueError` (as
    `json.JSONDecodeError` or plain) for anything that is not one well-formed JSON object.
    """
    decode = _DECODER.raw_decode
    pos = _skip(text, 0)
    if text[pos : pos + 1] != "{":
        raise ValueError(f"offset {pos}: expected '{{'")
    pos = _skip(text, pos + 1)
    if text[pos : pos + 1] == "}":
        _expect_end(text, pos + 1)
        return
    while True:
        name, pos = decode(text, pos)
        if type(name) is not str:
            raise ValueError(f"offset {pos}: member name is not a string")
        pos = _skip(text, pos)
        if text[pos : pos + 1] != ":":
            raise ValueError(f"offset {pos}: expected ':'")
        pos = _skip(text, pos + 1)
        if name in streamed and text[pos : pos + 1] == "[":
            pos = _skip(text, pos + 1)
            if text[pos : pos + 1] == "]":
                pos += 1
            else:
                closed = False
                while not closed:
                    value, pos = decode(text, pos)
                    yield Member(name, value, True)
                    pos, closed = _separator(text, pos, "]")
        else:
            value, pos = decode(text, pos)
            yield Member(name, value, False)
        pos, closed = _separator(text, pos, "}")
        if closed:
            _expect_end(text, pos)
            return


def _separator(text: str, pos: int, close: str) -> tuple[int, bool]:
    """Past the ',' or the `close` bracket after a value: (position, True if it was `close`)."""
    pos = _skip(text, pos)
    sep = text[pos : pos + 1]
    if sep != "," and sep != close:
        raise ValueError(f"offset {pos}: expected ',' or {close!r}")
    return _skip(text, pos + 1), sep == close


def _expect_end(text: str, pos: int) -> None:
    if _skip(text, pos) != len(text):
        raise ValueError(f"offset {pos}: extra data after the object")


def _skip(text: str, pos: int) -> int:
    # A loop, not a regex: what encode_state writes has no whitespace, so this returns at once.
    n = len(text)
    while pos < n and text[pos] in _WHITESPACE:
        pos += 1
    return pos
