"""The scorer's fast paths give the reference's answers: the body parser (the pydantic model),
the vectorised decode of Feast's stored values (the protos), the bearer check."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from feast.protos.feast.types.Value_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from models.scorer.api import RankRequest, parse_rank
from models.scorer.app import bearer_ok
from models.scorer.reader import double_rows, timestamps_ms

ids = st.one_of(st.text(max_size=4), st.sampled_from(["a", "b", "x" * 256, "x" * 257]))
numbers = st.one_of(st.none(), st.booleans(), st.integers(-3, 3),
                    st.floats(-2.0, 1e6, allow_nan=False, allow_infinity=False), st.text(max_size=2))
items = st.one_of(ids, st.integers(0, 3), st.fixed_dictionaries(
    {"item_id": ids}, optional={"category_id": st.one_of(st.none(), ids), "price": numbers,
                                "colour": st.just(1)}))
bodies = st.fixed_dictionaries(
    {"user_id": ids, "items": st.lists(items, max_size=5)},
    optional={"as_of_ms": numbers, "query": st.one_of(st.none(), st.text(max_size=3)),
              "context": st.one_of(st.none(), st.just({"k": [1]}), st.just([1])),
              "extra": st.just(0)})


def _reference(raw: bytes) -> object:
    try:
        return RankRequest.model_validate_json(raw).candidates()
    except ValidationError:
        return ValidationError


def _fast(raw: bytes) -> object:
    try:
        return parse_rank(raw)
    except ValidationError:
        return ValidationError


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_the_body_parser_answers_as_the_model(body):
    raw = json.dumps(body).encode()
    assert _fast(raw) == _reference(raw)


@pytest.mark.parametrize("raw", [
    b'{"user_id": "u", "items": [{"item_id": "a", "price": NaN}]}',
    b'{"user_id": "u", "items": ["a", "a"]}',
    b'{"user_id": "u", "items": [{"item_id": "a", "price": 3}]}',
    b'{"user_id": "u", "items": ["a"], "as_of_ms": 1.0}',
    b'{"user_id": "u", "items": ["a"]',
    b'[1]',
])
def test_the_body_parser_on_edge_cases(raw):
    assert _fast(raw) == _reference(raw)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-2**40, 2**40), st.integers(0, 999_999_999)),
                min_size=1, max_size=20))
def test_timestamps_decode_as_the_proto(times):
    raw = [Timestamp(seconds=s, nanos=n).SerializeToString() for s, n in times]
    want = [s * 1000 + n // 1_000_000 for s, n in times]
    assert timestamps_ms(raw).tolist() == want


def test_doubles_decode_as_the_proto_or_not_at_all():
    values = [0.0, -0.0, 1.5, float("nan"), 7e300, -2.0]
    rows = [[Value(double_val=v).SerializeToString() for v in values[k:k + 3]] + [b"ts"]
            for k in (0, 3)]
    got = double_rows(rows, 3)
    assert got is not None
    want = np.array([[v or 0.0 for v in values[k:k + 3]] for k in (0, 3)])
    assert np.array_equal(got, want, equal_nan=True)
    assert not np.signbit(got[0, 1])  # -0.0 reads as 0.0, as ``value or 0.0`` does
    assert double_rows([[None, rows[0][1], rows[0][2]]], 3) is None
    assert double_rows([[Value(float_val=1.0).SerializeToString()] * 3], 3) is None
    assert double_rows([[b")" + struct.pack("<d", 1.0) + b"x", b"", rows[0][2]]], 3) is None


def test_bearer_check():
    token = SecretStr("s3cret")
    assert bearer_ok("Bearer s3cret", token)
    assert not bearer_ok("Bearer s3cre", token)
    assert not bearer_ok("s3cret", token)
    assert not bearer_ok("", token)
    assert bearer_ok("", None)
