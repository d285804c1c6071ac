"""Choosing DLQ records: `--filter FIELD=VALUE` of `alpha-streaming dlq replay`.

The same field repeated means any of the values; different fields must all match. A record
that is not a DLQ record (no error headers) matches no filter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from alpha_streaming._errors import ConfigError
from alpha_streaming._tools.dlq_reader import DlqEntry

__all__ = ("FILTER_FIELDS", "RecordFilter", "matches_all", "parse_filters")

FILTER_FIELDS = ("error", "key", "type", "topic")


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """One `FIELD=VALUE`: error (class name or FQCN), key, type (x-event-type), topic (original)."""

    field: str
    value: str

    def matches(self, entry: DlqEntry) -> bool:
        letter = entry.dead_letter
        if letter is None:
            return False
        if self.field == "error":
            fqcn = letter.exception_fqcn
            return self.value in (fqcn, fqcn.rpartition(".")[2])
        if self.field == "key":
            return entry.key_text == self.value
        if self.field == "type":
            return entry.event_type == self.value
        return letter.original_topic == self.value  # "topic"


def parse_filters(texts: Iterable[str]) -> tuple[RecordFilter, ...]:
    filters = []
    for text in texts:
        name, sep, value = text.partition("=")
        name = name.strip().lower()
        if not sep or name not in FILTER_FIELDS or not value:
            raise ConfigError(
                f"bad filter {text!r}: expected FIELD=VALUE with FIELD one of {', '.join(FILTER_FIELDS)} "
                "(e.g. --filter error=ValueError --filter key=strategy:token)"
            )
        filters.append(RecordFilter(name, value))
    return tuple(filters)


def matches_all(filters: Sequence[RecordFilter], entry: DlqEntry) -> bool:
    by_field: dict[str, list[RecordFilter]] = {}
    for item in filters:
        by_field.setdefault(item.field, []).append(item)
    return all(any(item.matches(entry) for item in group) for group in by_field.values())
