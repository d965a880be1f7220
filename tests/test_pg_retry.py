"""PostgreSQL runs a conflicting operation again, pausing with the injected sleep, and gives up with a 503."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from callme.server.constants import PG_RETRIES, PG_RETRY_BACKOFF_FIRST, PG_RETRY_BACKOFF_MAX
from callme.server.errors import Unavailable
from callme.server.service_core import Core
from callme.server.settings import Settings
from callme.server.store.base import StoreError
from callme.server.store.postgres import PostgresStore, PostgresTx, retry_conflicts
from psycopg import errors as pg_errors


def _conflicting(times: int, error: type[Exception] = pg_errors.SerializationFailure) -> Callable[[], str]:
    """A function that raises `error` on its first `times` calls, then answers "done"."""
    calls = 0

    def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls <= times:
            raise error(f"conflict {calls}")
        return "done"

    return attempt


def test_a_conflict_is_run_again_after_a_pause_that_grows() -> None:
    pauses: list[float] = []
    assert retry_conflicts(_conflicting(PG_RETRIES - 1), sleep=pauses.append) == "done"
    assert len(pauses) == PG_RETRIES - 1  # the last attempt allowed succeeded
    for n, pause in enumerate(pauses, start=1):
        assert 0 <= pause <= min(PG_RETRY_BACKOFF_MAX, PG_RETRY_BACKOFF_FIRST * 2 ** (n - 1))


def test_after_the_last_attempt_the_conflict_surfaces_as_a_store_error() -> None:
    pauses: list[float] = []
    with pytest.raises(
        StoreError, match=f"gave up after {PG_RETRIES} conflicting attempts: conflict {PG_RETRIES}"
    ) as e:
        retry_conflicts(_conflicting(PG_RETRIES, pg_errors.DeadlockDetected), sleep=pauses.append)
    assert isinstance(e.value.__cause__, pg_errors.DeadlockDetected)
    assert len(pauses) == PG_RETRIES - 1


def test_any_other_error_surfaces_at_once() -> None:
    pauses: list[float] = []
    with pytest.raises(ValueError, match="conflict 1"):
        retry_conflicts(_conflicting(1, ValueError), sleep=pauses.append)
    assert pauses == []


def test_the_store_pauses_with_its_injected_sleep_and_answers_503(pg_url: str) -> None:
    pauses: list[float] = []
    store = PostgresStore(pg_url, listen=False, sleep=pauses.append)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(store.open())
        core = Core(store, Settings())
        attempts = 0

        def conflicting(tx: PostgresTx, op: object) -> None:
            nonlocal attempts
            attempts += 1
            raise pg_errors.SerializationFailure("could not serialize access")

        with pytest.raises(Unavailable) as raised:
            loop.run_until_complete(core.run(conflicting))  # type: ignore[arg-type]
        assert raised.value.status == 503
        assert isinstance(raised.value.__cause__, StoreError)
        assert (attempts, len(pauses)) == (PG_RETRIES, PG_RETRIES - 1)
        assert loop.run_until_complete(store.transact(lambda tx: tx.now())) > 0  # the connection is usable still
    finally:
        loop.run_until_complete(store.close())
        loop.close()
