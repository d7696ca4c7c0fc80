"""Canonical JSON: type-tagged, order-free, and refusing what it cannot encode stably."""

import math

import pytest

from llmbuild.plan.canonical import CanonicalJSONError, canonical_hash, canonical_json


def test_types_are_tagged():
    encodings = {canonical_json(v) for v in (1, 1.0, "1", True, [1], {"1": 1}, None)}
    assert len(encodings) == 7


def test_table_order_does_not_matter():
    assert canonical_json({"a": 1, "b": [1, 2]}) == canonical_json({"b": [1, 2], "a": 1})
    assert canonical_json([1, 2]) != canonical_json([2, 1])
    assert canonical_json((1, 2)) == canonical_json([1, 2])


@pytest.mark.parametrize(
    "bad", [object(), {1, 2}, b"x", math.nan, math.inf, {1: "x"}, {"a": [object()]}]
)
def test_unstable_values_raise(bad):
    with pytest.raises(CanonicalJSONError):
        canonical_json(bad)


def test_golden_encoding_and_hash():
    value = {
        "lr": 1e-05,
        "steps": 10,
        "name": "sft",
        "on": True,
        "betas": [0.9, 0.99],
        "none": None,
    }
    assert canonical_json(value) == (
        b'["dict",{"betas":["list",[["float","0.9"],["float","0.99"]]],"lr":["float","1e-05"],'
        b'"name":["str","sft"],"none":["null"],"on":["bool",true],"steps":["int","10"]}]'
    )
    assert canonical_hash(value) == (
        "5206d90903917fd9e7e5c57860d4d3bb8b8e937e487a49e829e2e845890a12aa"
    )
