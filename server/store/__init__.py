"""Stores: one typed interface (base), one module per backend."""

from __future__ import annotations

from ..clock import Clock
from .base import Store, StoreBroken, StoreError, StoreLocked, Tx

__all__ = ["Store", "StoreBroken", "StoreError", "StoreLocked", "Tx", "for_database", "is_postgres"]


def is_postgres(database: str) -> bool:
    """Whether CALL_ME_DATABASE names a PostgreSQL database (a URL) rather than a SQLite file."""
    return database.startswith(("postgres://", "postgresql://"))


def for_database(database: str, clock: Clock, *, listen: bool = True, allow_new_database: bool = False) -> Store:
    """The store that CALL_ME_DATABASE names: PostgreSQL for a postgresql:// URL, else a SQLite file."""
    if is_postgres(database):
        from .postgres import PostgresStore  # only when used: it loads libpq

        return PostgresStore(database, listen=listen)
    from .sqlite import SQLiteStore

    return SQLiteStore(database, clock, allow_new_database=allow_new_database)
