"""The scorer's Redis keys are Feast's, byte for byte."""

from __future__ import annotations

import random

import pytest
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from features.online import redis_key
from features.rows import JOIN_KEYS


@pytest.mark.parametrize("view", sorted(JOIN_KEYS))
def test_keys_equal_feasts(view):
    rng = random.Random(view)
    alphabet = "abcXYZ019_-é漢😀"
    join_keys = JOIN_KEYS[view]
    for _ in range(300):
        values = tuple("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
                       for _ in join_keys)
        proto = EntityKey(join_keys=list(join_keys),
                          entity_values=[Value(string_val=v) for v in values])
        assert redis_key(join_keys, values, "streamrank") == _redis_key(
            "streamrank", proto, entity_key_serialization_version=3)


def test_the_order_of_join_keys_does_not_change_the_key():
    assert redis_key(("user_id", "category_id"), ("u1", "c1"), "p") == redis_key(
        ("category_id", "user_id"), ("c1", "u1"), "p")
