"""The scorer's Redis keys are Feast's, byte for byte."""

from __future__ import annotations

import random

import pytest
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from features.online import redis_key, redis_keys
from features.rows import JOIN_KEYS


@pytest.mark.parametrize("join_keys", [*(JOIN_KEYS[v] for v in sorted(JOIN_KEYS)),
                                       ("user_id", "session_id", "category_id")])
def test_keys_equal_feasts(join_keys):
    rng = random.Random(",".join(join_keys))
    alphabet = "abcXYZ019_-é漢😀"
    rows = [tuple("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
                  for _ in join_keys) for _ in range(300)]
    theirs = [_redis_key("streamrank", EntityKey(join_keys=list(join_keys), entity_values=[
        Value(string_val=v) for v in values]), entity_key_serialization_version=3)
        for values in rows]
    assert redis_keys(join_keys, rows, "streamrank") == theirs
    assert [redis_key(join_keys, values, "streamrank") for values in rows] == theirs


def test_the_order_of_join_keys_does_not_change_the_key():
    assert redis_key(("user_id", "category_id"), ("u1", "c1"), "p") == redis_key(
        ("category_id", "user_id"), ("c1", "u1"), "p")
