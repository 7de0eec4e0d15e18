"""The scorer's HTTP bodies (pydantic; unknown fields are refused).

``POST /rank``::

    {"user_id": "u1", "items": ["i1", {"item_id": "i2", "category_id": "c7", "price": 19.9}],
     "query": null, "context": null, "as_of_ms": null}

``POST /search``::

    {"user_id": "u1", "query": "cordless drill", "k": 10, "as_of_ms": null}

Items are IDs, or objects with the item's ``category_id`` (which gives the user x category
features and the category embedding; an item without one has an unknown category, as in a
training example without one) and its ``price`` (a finite number >= 0, the price the
impression would log; without one the price is unknown, as in a training example whose log
has none). ``as_of_ms`` reads the features as of that event time (default:
now), for replays and comparisons.

:func:`parse_rank` reads a body into :class:`Candidates` with ``orjson`` and a few checks per
item (about 5x faster than the pydantic model for 1,000 items); a body those checks do not
accept as plainly valid goes through :class:`RankRequest`, whose answer (the request, or the
validation error) is the rule.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

ID_MAX = 256


class ItemRef(BaseModel):
    """A candidate with its category."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: str = Field(min_length=1, max_length=ID_MAX)
    category_id: str | None = Field(default=None, min_length=1, max_length=ID_MAX)
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False, strict=True)


class RankRequest(BaseModel):
    """One ranking request (``max_items`` is checked by the app from the settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str = Field(min_length=1, max_length=ID_MAX)
    items: list[ItemRef | str] = Field(min_length=1)
    query: str | None = Field(default=None, max_length=1_024)
    context: dict[str, Any] | None = None
    as_of_ms: int | None = Field(default=None, ge=0)

    @field_validator("items")
    @classmethod
    def _distinct(cls, items: list[ItemRef | str]) -> list[ItemRef | str]:
        seen: set[str] = set()
        for item in items:
            item_id = item if isinstance(item, str) else item.item_id
            if not item_id or len(item_id) > ID_MAX:
                raise ValueError(f"item ids are 1 to {ID_MAX} characters")
            if item_id in seen:
                raise ValueError(f"duplicate item {item_id!r}")
            seen.add(item_id)
        return items

    def refs(self) -> list[ItemRef]:
        """The items as :class:`ItemRef`."""
        return [ItemRef(item_id=i) if isinstance(i, str) else i for i in self.items]

    def candidates(self) -> Candidates:
        """The request as columns."""
        refs = self.refs()
        return Candidates(self.user_id, [r.item_id for r in refs],
                          [r.category_id for r in refs], [r.price for r in refs], self.as_of_ms,
                          self.query)


class Candidates(NamedTuple):
    """A valid ``/rank`` request as the columns the scorer reads."""

    user_id: str
    item_ids: list[str]
    category_ids: list[str | None]
    prices: list[float | None]
    as_of_ms: int | None
    query: str | None = None


_REQUEST_KEYS = frozenset(RankRequest.model_fields)
_ITEM_KEYS = frozenset(ItemRef.model_fields)


def _id(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= ID_MAX


def _fast(body: bytes) -> Candidates | None:
    """The request when it is plainly valid, else None (then the model decides)."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(raw) is not dict or not raw.keys() <= _REQUEST_KEYS:
        return None
    user, items, as_of = raw.get("user_id"), raw.get("items"), raw.get("as_of_ms")
    query, context = raw.get("query"), raw.get("context")
    if (not _id(user) or type(items) is not list or not items
            or not (as_of is None or (type(as_of) is int and as_of >= 0))
            or not (query is None or (type(query) is str and len(query) <= 1_024))
            or not (context is None or (type(context) is dict and not any(  # nested: the
                type(v) in (dict, list) for v in context.values())))):  # model's depth limit
        return None
    ids: list[str] = []
    cats: list[str | None] = []
    prices: list[float | None] = []
    for item in items:
        if type(item) is str:
            ids.append(item)
            cats.append(None)
            prices.append(None)
            continue
        if type(item) is not dict or not item.keys() <= _ITEM_KEYS:
            return None
        cat, price = item.get("category_id"), item.get("price")
        if (not (cat is None or _id(cat))
                or not (price is None or (type(price) is float and price >= 0
                                          and math.isfinite(price)))):
            return None
        ids.append(item.get("item_id"))  # type: ignore[arg-type]
        cats.append(cat)
        prices.append(price)
    if not all(map(_id, ids)) or len(set(ids)) != len(ids):
        return None
    return Candidates(user, ids, cats, prices, as_of, query)


def parse_rank(body: bytes) -> Candidates:
    """The ``/rank`` body as :class:`Candidates` (raises pydantic's ``ValidationError``).

    >>> parse_rank(b'{"user_id": "u", "items": ["a", {"item_id": "b", "price": 2.5}]}')
    Candidates(user_id='u', item_ids=['a', 'b'], category_ids=[None, None], prices=[None, 2.5], as_of_ms=None, query=None)
    """
    return _fast(body) or RankRequest.model_validate_json(body).candidates()


class SearchRequest(BaseModel):
    """One ``/search`` request (``k`` at most ``search_max_k``, checked by the app)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str = Field(min_length=1, max_length=ID_MAX)
    query: str = Field(min_length=1, max_length=1_024, pattern=r"\S")
    k: int = Field(default=10, ge=1)
    as_of_ms: int | None = Field(default=None, ge=0)


class PinRequest(BaseModel):
    """``POST /admin/pin``."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
