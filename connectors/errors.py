"""Errors raised at the wire: every one carries a short machine-readable reason."""

from __future__ import annotations

from pydantic import ValidationError


class DecodeError(ValueError):
    """A record could not be turned into a valid event.

    ``reason`` is a stable code (``bad_json``, ``invalid_field``, ``oversize``, ``absurd_time``,
    ``late``, ``not_utf8``); ``detail`` is the human explanation.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def explain(err: ValidationError) -> str:
    """A pydantic error as one line: ``field: message`` per error, ``;``-separated.

    >>> from pydantic import BaseModel
    >>> class M(BaseModel):
    ...     n: int
    >>> try:
    ...     M.model_validate({"n": "x"})
    ... except ValidationError as err:
    ...     print(explain(err))
    n: Input should be a valid integer, unable to parse string as an integer
    """
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in err.errors())


def rejected(err: ValidationError) -> DecodeError:
    """The :class:`DecodeError` of a record that pydantic rejected: ``bad_json`` for broken JSON
    syntax, ``invalid_field`` for the rest."""
    errors = err.errors()
    if any(e["type"] == "json_invalid" for e in errors):
        return DecodeError("bad_json", errors[0]["msg"])
    return DecodeError("invalid_field", explain(err))


def source(topic: str, partition: int | None = None, offset: int | None = None) -> str:
    """Where a dead letter came from, in the one format every stage uses:
    ``topic[partition]@offset`` where known, else the topic.

    >>> source("events", 2, 7), source("training.examples")
    ('events[2]@7', 'training.examples')
    """
    return topic if partition is None or offset is None else f"{topic}[{partition}]@{offset}"
