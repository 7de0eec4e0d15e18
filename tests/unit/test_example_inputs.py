"""The model's newer inputs (price, position, recent clicked items and categories): computed by
the pure feature reference as of the impression, and encoded alike for training and serving."""

from __future__ import annotations

import torch

from config import Settings
from connectors.events import Event
from connectors.training_examples import TrainingExample, decode_example, encode_example
from features.example_builder import build_examples
from models.ranker import DENSE_INPUTS, encode_batch, hash_id

SETTINGS = Settings()


def ev(i: int, kind: str, t: int, item: str, category: str | None = None,
       request: str | None = None, position: int | None = None,
       price: float | None = None) -> Event:
    return Event(event_id=str(i), event_type=kind, user_id="u", item_id=item,
                 category_id=category, event_time=t, request_id=request, position=position,
                 price=price)


LOG = [
    ev(1, "click", 1_000, "a", "ca"),
    ev(2, "impression", 2_000, "b", "cb", request="r1", position=3, price=12.5),
    ev(3, "click", 2_500, "b", "cb", request="r1"),  # the label of 2: never its own input
    ev(4, "impression", 4_000, "a", "ca", request="r2", position=0),
    ev(5, "click", 4_000, "c", "cc"),  # same millisecond as impression 4, after it in the log
]


def by_id() -> dict[str, TrainingExample]:
    return {x.example_id: x for x in build_examples(LOG, SETTINGS)}


def test_recent_clicks_are_those_before_the_impression() -> None:
    xs = by_id()
    assert xs["2"].click == 1
    assert xs["2"].recent_items == ("a",) and xs["2"].recent_categories == ("ca",)
    # The click that labels impression 2 is history for the later impression 4, not for 2;
    # the click after impression 4 in the user's own order is not history for it.
    assert xs["4"].recent_items == ("b", "a") and xs["4"].recent_categories == ("cb", "ca")


def test_price_and_position_come_from_the_impression() -> None:
    xs = by_id()
    assert (xs["2"].price, xs["2"].position) == (12.5, 3)
    assert (xs["4"].price, xs["4"].position) == (None, 0)


def test_new_fields_travel_on_the_wire_and_default_for_older_producers() -> None:
    x = by_id()["4"]
    assert decode_example(encode_example(x)) == x
    old = b'{"example_id":"e","user_id":"u","item_id":"i","event_time":1,"click":0,' \
          b'"purchase":0,"features":{}}'
    y = decode_example(old)
    assert y.price is None and y.recent_items == () and y.recent_categories == ()


def test_item_in_recent_clicks_is_encoded_from_the_example_itself() -> None:
    xs = by_id()
    batch = encode_batch([xs["2"], xs["4"]], 1009, training=True)
    col = DENSE_INPUTS.index("item_in_recent")
    assert batch.dense[:, col].tolist() == [0.0, 1.0]  # "a" was clicked before impression 4
    assert batch.recent_items[1, :2].tolist() == [hash_id("b", 1009), hash_id("a", 1009)]
    assert torch.equal(batch.recent_items, encode_batch([xs["2"], xs["4"]], 1009).recent_items)
