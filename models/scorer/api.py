"""The scorer's HTTP bodies (pydantic; unknown fields are refused).

``POST /rank``::

    {"user_id": "u1", "items": ["i1", {"item_id": "i2", "category_id": "c7", "price": 19.9}],
     "query": null, "context": null, "as_of_ms": null}

Items are IDs, or objects with the item's ``category_id`` (which gives the user x category
features and the category embedding; an item without one has an unknown category, as in a
training example without one) and its ``price`` (a finite number >= 0, the price the
impression would log; without one the price is unknown, as in a training example whose log
has none). ``as_of_ms`` reads the features as of that event time (default:
now), for replays and comparisons.
"""

from __future__ import annotations

from typing import Any

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


class PinRequest(BaseModel):
    """``POST /admin/pin``."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
