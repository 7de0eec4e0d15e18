"""The scorer's HTTP bodies (pydantic; unknown fields are refused).

``POST /rank``::

    {"user_id": "u1", "items": ["i1", {"item_id": "i2", "category_id": "c7"}],
     "query": null, "context": null, "as_of_ms": null}

Items are IDs, or objects with the item's ``category_id`` (which gives the user x category
features and the category embedding; an item without one has an unknown category, as in a
training example without one). ``as_of_ms`` reads the features as of that event time (default:
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


class RankedItem(BaseModel):
    """One item of the answer."""

    item_id: str
    p_click: float
    p_purchase: float
    score: float


class RankResponse(BaseModel):
    """Items best first, the one model version that scored all of them, degraded flag."""

    model_version: int
    items: list[RankedItem]
    degraded: bool = False


class PinRequest(BaseModel):
    """``POST /admin/pin``."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
