"""The published event contract, ``schema/event.schema.json``, is the pydantic model's schema.

When this fails after a change to ``connectors.events.Event``, regenerate the file with
``.venv/bin/python -m connectors.event_schema`` and commit it.
"""

from __future__ import annotations

import json

import pytest

from connectors import event_schema
from connectors.errors import DecodeError
from connectors.events import EVENT_TYPES, decode_event

NOW_MS = 1_511_658_000_000
VALID = [
    {"event_id": "e1", "event_type": "click", "user_id": "u1", "item_id": "i9",
     "event_time": NOW_MS},
    {"event_id": "e2", "event_type": "impression", "user_id": "u1", "item_id": "i9",
     "event_time": NOW_MS, "request_id": "r1", "position": 0, "category_id": "c7",
     "price": 19.9, "query": "red shoes"},
    {"event_id": "e3", "event_type": "purchase", "user_id": "u1", "item_id": "i9",
     "event_time": NOW_MS, "request_id": None, "price": 0, "some_other_field": [1, 2]},
]
INVALID = [
    {"event_type": "click", "user_id": "u1", "item_id": "i9", "event_time": NOW_MS},
    {"event_id": "e1", "event_type": "view", "user_id": "u1", "item_id": "i9",
     "event_time": NOW_MS},
    {"event_id": "", "event_type": "click", "user_id": "u1", "item_id": "i9",
     "event_time": NOW_MS},
    {"event_id": "e1", "event_type": "click", "user_id": "u" * 129, "item_id": "i9",
     "event_time": NOW_MS},
    {"event_id": "e1", "event_type": "click", "user_id": "u1", "item_id": "i9",
     "event_time": "1511658000000"},
    {"event_id": "e1", "event_type": "click", "user_id": "u1", "item_id": "i9",
     "event_time": NOW_MS, "position": -1},
    {"event_id": "e1", "event_type": "click", "user_id": "u1", "item_id": "i9",
     "event_time": NOW_MS, "price": -0.5},
    {"event_id": "e1", "event_type": "click", "user_id": 7, "item_id": "i9",
     "event_time": NOW_MS},
    ["not", "an", "object"],
]


def test_the_committed_file_is_the_generated_schema() -> None:
    committed = event_schema.SCHEMA_PATH.read_text()
    assert json.loads(committed) == event_schema.event_schema(), (
        "schema/event.schema.json is stale: run `.venv/bin/python -m connectors.event_schema`")
    assert committed == event_schema.render()


def test_check_mode_reports_a_stale_file(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    out = tmp_path / "event.schema.json"
    assert event_schema.main(["--check", "--out", str(out)]) == 1
    assert event_schema.main(["--out", str(out)]) == 0
    assert event_schema.main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace("click", "clique"))
    assert event_schema.main(["--check", "--out", str(out)]) == 1


def test_the_schema_names_the_contract() -> None:
    schema = event_schema.event_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["event_id", "event_type", "user_id", "item_id", "event_time"]
    assert tuple(schema["properties"]["event_type"]["enum"]) == EVENT_TYPES


@pytest.mark.parametrize("record", VALID)
def test_a_valid_event_validates_and_decodes(record: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(event_schema.event_schema()).validate(record)
    decode_event(json.dumps(record), now_ms=NOW_MS)


@pytest.mark.parametrize("record", INVALID)
def test_an_invalid_event_fails_both(record: object) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(event_schema.event_schema())
    assert not validator.is_valid(record)
    with pytest.raises(DecodeError):
        decode_event(json.dumps(record), now_ms=NOW_MS)


def test_the_schema_itself_is_valid_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(event_schema.event_schema())
