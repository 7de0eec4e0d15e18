"""The event contract as a JSON Schema, generated from :class:`connectors.events.Event`.

The schema is published in the repository as ``schema/event.schema.json`` so that producers in
other languages can validate against it; ``tests/unit/test_event_schema.py`` fails when the
committed file and the model drift apart. Regenerate it after changing the model::

    .venv/bin/python -m connectors.event_schema          # writes schema/event.schema.json
    .venv/bin/python -m connectors.event_schema --check  # exit 1 if the file is stale

The schema says what the pydantic model says (field names, types, lengths, the event types);
the checks that are not about one record's shape stay in :func:`connectors.events.decode_event`
and the jobs: the record size (``oversize``), the event time's plausible range
(``absurd_time``) and lateness against the watermark (``late``).

>>> schema = event_schema()
>>> schema["$schema"], schema["title"]
('https://json-schema.org/draft/2020-12/schema', 'streamrank shopper event')
>>> schema["required"]
['event_id', 'event_type', 'user_id', 'item_id', 'event_time']
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from connectors.events import Event

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / "event.schema.json"
"""Where the generated schema is committed."""
SCHEMA_ID = "urn:streamrank:schema:event"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
DESCRIPTION = (
    "One shopper event on the `events` topic: one UTF-8 JSON object per Kafka record, keyed by "
    "user_id. event_time is event time in epoch milliseconds; IDs are strings; unknown fields "
    "are ignored. Beyond this schema the validators dead-letter, with the default settings, a "
    "record over 16 KiB (oversize), an event_time before 2000-01-01 or more than 24 h ahead of "
    "the wall clock (absurd_time) and an event later than the watermark by more than the "
    "allowed lateness (late); the jobs' validation also rejects a position beyond 64 bits "
    "(invalid_field). Generated from connectors/events.py by "
    "`python -m connectors.event_schema`."
)


def event_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one event, as committed in ``schema/``."""
    body = Event.model_json_schema()
    body.pop("title", None)
    body.pop("description", None)
    return {"$schema": DIALECT, "$id": SCHEMA_ID, "title": "streamrank shopper event",
            "description": DESCRIPTION, **body}


def render() -> str:
    """The schema as the committed file's text (two-space indent, trailing newline)."""
    return json.dumps(event_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the schema to ``--out`` (default :data:`SCHEMA_PATH`), or with ``--check`` only
    compare; returns the exit status (1: the file is missing or stale)."""
    parser = argparse.ArgumentParser(prog="python -m connectors.event_schema",
                                     description="Generate the event contract's JSON Schema.")
    parser.add_argument("--out", type=Path, default=SCHEMA_PATH, help="file to write")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when the file differs from the model")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else None
        if current != text:
            print(f"{args.out} is stale: run `python -m connectors.event_schema`", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
