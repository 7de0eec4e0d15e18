"""Feast declarations: entities, feature views over push sources, and the ranker's service.

Rows reach the online store from the features job through the ``features.rows`` topic and the
Feast writer (``jobs/feast_writer.py``, writing through Feast's provider, see
``features/writer.py``), and the same rows are appended to each view's parquet log, the batch
source behind its push source (offline backfill and point-in-time training sets read it).

Batch-source paths are relative: ``features.store.apply_repo`` roots them under
``<run_dir>/feast/offline/`` when it registers these objects, so run-time data stays out of
the source tree. Register with ``apply_repo``, not ``feast apply`` (which would resolve them
inside this directory); every other ``feast`` command works with
``feast -f <run_dir>/feast/feature_store.yaml -c features/feature_repo ...``. TTL: 48 h for every view (a row older than that is outside the view's
point-in-time window; Redis keys also expire after the same time without a write).
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float64, String

from features.rows import (
    ITEM_VIEW,
    USER_CATEGORY_STORED,
    USER_CATEGORY_VIEW,
    USER_LISTS,
    USER_VIEW,
)
from features.schema import ITEM_FEATURES, USER_FEATURES

TTL = timedelta(hours=48)
"""The views' TTL as declared (feature_state_ttl_ms's default); :func:`features.store.repo_objects`
sets the configured one."""
TIMESTAMP_FIELD = "event_timestamp"

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A shopper.")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="A catalogue item.")
category = Entity(name="category", join_keys=["category_id"], value_type=ValueType.STRING,
                  description="An item category.")


def _push_source(view: str) -> PushSource:
    log = FileSource(name=f"{view}_log", path=view, timestamp_field=TIMESTAMP_FIELD,
                     description=f"Parquet log of every {view} row written (one file per flush).")
    return PushSource(name=f"{view}_push", batch_source=log)


def _floats(names: tuple[str, ...]) -> list[Field]:
    return [Field(name=name, dtype=Float64) for name in names]


user_features = FeatureView(
    name=USER_VIEW,
    entities=[user],
    ttl=TTL,
    schema=[Field(name="user_id", dtype=String), *_floats(USER_FEATURES),
            *[Field(name=name, dtype=Array(String)) for name in USER_LISTS]],
    source=_push_source(USER_VIEW),
    online=True,
    description="Per-user decayed counts, recency and last-N clicked items/categories.",
)

item_features = FeatureView(
    name=ITEM_VIEW,
    entities=[item],
    ttl=TTL,
    schema=[Field(name="item_id", dtype=String), *_floats(ITEM_FEATURES)],
    source=_push_source(ITEM_VIEW),
    online=True,
    description="Per-item decayed counts, smoothed CTR/CVR and recency.",
)

user_category_features = FeatureView(
    name=USER_CATEGORY_VIEW,
    entities=[user, category],
    ttl=TTL,
    schema=[Field(name="user_id", dtype=String), Field(name="category_id", dtype=String),
            *_floats(USER_CATEGORY_STORED)],
    source=_push_source(USER_CATEGORY_VIEW),
    online=True,
    description="Per (user, category) decayed counts and affinity; uc_in_last_categories is "
                "derived at read time from the user's last_categories.",
)

ranker = FeatureService(
    name="ranker",
    features=[user_features, item_features, user_category_features],
    description="Everything the ranking model reads (features.online.read_features).",
)
