"""What a conversion tells its caller: the report of what was made, and the error that
says why nothing was."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from agora.core.errors import InvalidInput


class ConversionError(InvalidInput):
    """The database could not be converted; nothing was left in the target."""

    title = "SQLite conversion failed"

    def __init__(self, detail: str, *, table: str | None = None, rowid: Any = None,
                 column: str | None = None):
        super().__init__(detail)
        self.table, self.rowid, self.column = table, rowid, column


@dataclass(frozen=True)
class ColumnReport:
    name: str
    declared: str   # SQLite's declared type, "" for none
    type: str       # the PostgreSQL type it was given


@dataclass(frozen=True)
class TableReport:
    name: str
    source_rows: int
    target_rows: int
    columns: tuple[ColumnReport, ...]


@dataclass
class ConversionReport:
    source: Path
    tables: list[TableReport] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)   # created, user-named ones
    views: list[str] = field(default_factory=list)     # created
    warnings: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(table.target_rows for table in self.tables)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pg_message(error: psycopg.Error) -> str:
    """PostgreSQL's own words for an error, without psycopg's decoration."""
    return (error.diag.message_primary or str(error)).strip()
