"""sip.jsonstream: the same members as json.loads, element by element, and the same refusals."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.jsonstream import Member, members

STREAMED = frozenset(("calls", "lingering"))

scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                               max_size=4),
    max_leaves=12,
)  # fmt: skip
objects = st.dictionaries(st.sampled_from(["calls", "lingering", "stats", "x", "é"]), values)


def rebuild(found: list[Member]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value, element in found:
        if element:
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    return out


@given(objects, st.sampled_from([None, 1]))
def test_members_rebuild_what_json_loads_reads(obj: dict[str, Any], indent: int | None) -> None:
    text = json.dumps(obj, indent=indent, separators=None if indent else (",", ":"))
    found = list(members(text, STREAMED))
    expected = json.loads(text)
    for name in STREAMED:  # an empty streamed array yields no element
        if expected.get(name) == []:
            del expected[name]
    assert rebuild(found) == expected
    for name, _value, element in found:
        assert element == (name in STREAMED and isinstance(obj[name], list))


def test_elements_come_one_at_a_time_in_document_order() -> None:
    text = '{"format":"f","calls":[[1],[2],[3]],"lingering":[],"stats":{"a":1}}'
    assert list(members(text, STREAMED)) == [
        Member("format", "f", False),
        Member("calls", [1], True),
        Member("calls", [2], True),
        Member("calls", [3], True),
        Member("stats", {"a": 1}, False),
    ]


@pytest.mark.parametrize(
    "text",
    ["", "[]", "{", '{"a":1', '{"a":1,}', '{"calls":[1,]}', '{"calls":[1 2]}', '{"a" 1}',
     '{1:2}', '{"a":1} x', '{"calls":[1]', '{"calls":[1],"b"}'],
)  # fmt: skip
def test_malformed_documents_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        list(members(text, STREAMED))


@given(st.text(max_size=40))
def test_any_text_either_parses_or_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        list(members(text, STREAMED))
