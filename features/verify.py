"""Checks of a run against the pure reference: what the online store and the examples topic
should hold for a log, and where they differ (used by the equality tests and benchmarks).

* :func:`reference` runs :class:`features.example_builder.ExampleBuilder` over a log in arrival order:
  the last row of each (view, key) and every example by ``example_id``.
* :func:`online_rows` reads rows back through Feast's ``get_online_features``.
* :func:`row_differences` / :func:`example_differences` compare: counts exactly, floats to
  ``tol`` (relative and absolute), ID lists exactly.

>>> from connectors.events import Event
>>> from config import Settings
>>> rows, examples = reference([Event(event_id="1", event_type="click", user_id="u",
...                                   item_id="i", event_time=1_000)], Settings())
>>> sorted(rows), examples
([('item_features', ('i',)), ('user_features', ('u',))], {})
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from config import Settings
from connectors.events import Event
from connectors.training_examples import TrainingExample
from features.example_builder import ExampleBuilder
from features.rows import (
    ITEM_VIEW,
    JOIN_KEYS,
    USER_CATEGORY_STORED,
    USER_CATEGORY_VIEW,
    USER_LISTS,
    USER_VIEW,
    FeatureRow,
)
from features.schema import ITEM_FEATURES, USER_FEATURES

if TYPE_CHECKING:
    from feast import FeatureStore

TOL = 1e-9
STORED: dict[str, tuple[str, ...]] = {
    USER_VIEW: USER_FEATURES + USER_LISTS,
    ITEM_VIEW: ITEM_FEATURES,
    USER_CATEGORY_VIEW: USER_CATEGORY_STORED,
}
"""The features each view stores."""
RowKey = tuple[str, tuple[str, ...]]


def reference(events: Iterable[Event], settings: Settings
              ) -> tuple[dict[RowKey, FeatureRow], dict[str, TrainingExample]]:
    """The reference's last row per (view, key) and its examples by id, for ``events`` in
    arrival order."""
    builder = ExampleBuilder(settings)
    rows: dict[RowKey, FeatureRow] = {}
    examples: list[TrainingExample] = []
    for event in events:
        changed, finished = builder.step(event)
        for row in changed:
            rows[(row.view, row.key)] = row
        examples += finished
    examples += builder.flush()
    return rows, {x.example_id: x for x in examples}


def online_rows(store: FeatureStore, view: str, keys: list[tuple[str, ...]],
                batch: int = 2_000) -> dict[tuple[str, ...], dict[str, Any] | None]:
    """The stored values of ``keys`` of ``view`` read through ``get_online_features`` (None
    for a key without a row)."""
    names = STORED[view]
    out: dict[tuple[str, ...], dict[str, Any] | None] = {}
    for start in range(0, len(keys), batch):
        chunk = keys[start:start + batch]
        got = store.get_online_features(
            features=[f"{view}:{n}" for n in names],
            entity_rows=[dict(zip(JOIN_KEYS[view], key)) for key in chunk]).to_dict()
        for i, key in enumerate(chunk):
            values = {n: got[n][i] for n in names}
            out[key] = None if all(v is None for v in values.values()) else values
    return out


def _same(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (a is not None and b is not None
                and math.isclose(a, b, rel_tol=tol, abs_tol=tol))
    return list(a) == list(b) if isinstance(a, list | tuple) else a == b


def row_differences(want: Mapping[RowKey, FeatureRow], store: FeatureStore,
                    tol: float = TOL) -> list[str]:
    """Every (view, key, feature) where the online store differs from ``want``."""
    bad: list[str] = []
    for view in STORED:
        keys = [key for v, key in want if v == view]
        got = online_rows(store, view, keys)
        for key in keys:
            row, values = want[(view, key)], got[key]
            if values is None:
                bad.append(f"{view} {key}: no row online")
                continue
            bad += [f"{view} {key} {name}: {values[name]!r} != {row.values[name]!r}"
                    for name in STORED[view] if not _same(values[name], row.values[name], tol)]
    return bad


def example_differences(want: Mapping[str, TrainingExample], got: Iterable[TrainingExample],
                        tol: float = TOL) -> list[str]:
    """Where the examples ``got`` (copies of one example allowed, as an at-least-once topic
    has them; they must be equal) differ from ``want``: missing, extra, or other values."""
    bad: list[str] = []
    seen: dict[str, TrainingExample] = {}
    for x in got:
        first = seen.setdefault(x.example_id, x)
        if first is not x and first != x:
            bad.append(f"{x.example_id}: two different copies")
    bad += [f"{i}: missing" for i in want.keys() - seen.keys()]
    bad += [f"{i}: not in the reference" for i in seen.keys() - want.keys()]
    for i in want.keys() & seen.keys():
        x, w = seen[i], want[i]
        fields = ("user_id", "item_id", "category_id", "request_id", "position", "event_time",
                  "click", "purchase")
        bad += [f"{i} {f}: {getattr(x, f)!r} != {getattr(w, f)!r}"
                for f in fields if getattr(x, f) != getattr(w, f)]
        if x.features.keys() != w.features.keys():
            bad.append(f"{i}: features {sorted(x.features)} != {sorted(w.features)}")
            continue
        bad += [f"{i} {k}: {x.features[k]!r} != {v!r}" for k, v in w.features.items()
                if not _same(x.features[k], v, tol)]
    return bad
