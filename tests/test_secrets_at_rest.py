"""Secrets at rest (issue 12, item 6), against real servers on 127.0.0.1, a real SQLite file and the throwaway
PostgreSQL: a copy of the database holds no lease token, ticket id or request_id, and what it does hold opens
nothing on the live server; a client that comes back with its request_id or its ticket still gets a working token;
the SQLite files are 0600; a database from before keeps working; the secret decides, across restarts, whether a
token is good (docs/api.md: Tokens, ticket ids and the server secret).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from callme.server.errors import ConfigError
from callme.server.settings import load
from callme.server.store.migrations import MIGRATIONS, statements

from .contract import granted, lease_state, post, problem, queue_seqs, queued
from .serverproc import CLIENT_KEY, ServerProcess

CLIENT_NAME = "ci"  # the name of CLIENT_KEY in serverproc's configuration: request_ids are kept per key name
SECRET = "a-test-secret-of-at-least-32-characters-" + "x" * 8
# Columns of schema 4 (the version before secrets at rest) that tests/test_secrets_at_rest.py writes itself.
LEASE_V4 = (
    "id, environment, token, holder, metadata, fence, ttl, acquired_at, expires_at, touched_at, key_name, state, "
    "ended_at, ticket_id, seq, collect_by"
)
TICKET_V4 = (
    "id, seq, key_name, environment, label, holder, ttl, priority, metadata, enqueued_at, seen_at, request_id, "
    "state, lease_id, ended_at"
)


# -- servers on either store, and copies of their databases -------------------------------------------------


class Live:
    """A running server and a way to copy its database as a backup or a leaked dump would."""

    def __init__(
        self, proc: ServerProcess, copy: Callable[[], str], rows: Callable[[], dict[str, list[dict[str, Any]]]]
    ):
        self.proc, self.copy, self.rows = proc, copy, rows


def _sqlite_copy(proc: ServerProcess, workdir: Path) -> Callable[[], str]:
    def copy() -> str:
        """The files as a file-level backup copies them (raw bytes), and an SQL dump of a copy made with SQLite's
        own backup: everything anyone holding a copy could read."""
        raw = b"".join(
            Path(proc.database + suffix).read_bytes()
            for suffix in ("", "-wal")
            if Path(proc.database + suffix).exists()
        )
        target = workdir / f"copy-{uuid.uuid4().hex}.db"
        source = sqlite3.connect(f"file:{proc.database}?mode=ro", uri=True)
        with closing(source) as src, closing(sqlite3.connect(target)) as dst:
            src.backup(dst)
            dump = "\n".join(dst.iterdump())
        return raw.decode("latin-1") + "\n" + dump

    return copy


def _sqlite_rows(proc: ServerProcess) -> Callable[[], dict[str, list[dict[str, Any]]]]:
    def rows() -> dict[str, list[dict[str, Any]]]:
        with closing(sqlite3.connect(f"file:{proc.database}?mode=ro", uri=True)) as conn:
            conn.row_factory = sqlite3.Row
            return {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t}")] for t in ("leases", "tickets")}  # noqa: S608

    return rows


def _pg_copy(url: str) -> Callable[[], str]:
    def copy() -> str:
        """Every row of every table, as a data dump has them."""
        with psycopg.connect(url) as conn:
            tables = [
                r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            ]
            return "\n".join(
                str(r[0])
                for t in tables
                for r in conn.execute(f"SELECT row_to_json(x)::text FROM {t} AS x")  # noqa: S608
            )

    return copy


def _pg_rows(url: str) -> Callable[[], dict[str, list[dict[str, Any]]]]:
    def rows() -> dict[str, list[dict[str, Any]]]:
        with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
            return {t: list(conn.execute(f"SELECT * FROM {t}")) for t in ("leases", "tickets")}  # noqa: S608

    return rows


@pytest.fixture(params=["sqlite", "postgres"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Live]:
    if request.param == "sqlite":
        proc = ServerProcess(tmp_path)  # the secret: the file made beside the database at first start
        copy, rows = _sqlite_copy(proc, tmp_path), _sqlite_rows(proc)
    else:
        url = request.getfixturevalue("pg_url")
        proc = ServerProcess(tmp_path, database=url, env={"CALL_ME_SECRET": SECRET})
        copy, rows = _pg_copy(url), _pg_rows(url)
    proc.start()
    try:
        yield Live(proc, copy, rows)
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()


def _holder_and_waiter(http: httpx.Client) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """A lease on uat taken with a request_id, and a ticket waiting behind it with another."""
    first_request, second_request = str(uuid.uuid4()), str(uuid.uuid4())
    lease = granted(http, environment="uat", request_id=first_request)
    waiting = queued(http, environment="uat", request_id=second_request)
    return lease, waiting, first_request, second_request


def _renew(http: httpx.Client, lease_id: str, token: str) -> httpx.Response:
    return http.post(f"/v1/leases/{lease_id}/renew", headers={"X-Lease-Token": token})


def _release(http: httpx.Client, lease_id: str, token: str) -> httpx.Response:
    return http.delete(f"/v1/leases/{lease_id}", headers={"X-Lease-Token": token})


# -- a copy of the database ----------------------------------------------------------------------------------


def test_a_copy_of_the_database_holds_no_token_ticket_id_or_request_id(live: Live) -> None:
    with live.proc.client(CLIENT_KEY) as http:
        lease, waiting, first_request, second_request = _holder_and_waiter(http)
        dump = live.copy()
    assert lease["token"].startswith("k_")
    ticket_row, _, ticket_mac = waiting["ticket"].rpartition(".")
    assert ticket_row in dump  # the copy is a real one: the ticket's row is there, by its public part
    for secret in (lease["token"], lease["token"][2:], waiting["ticket"], ticket_mac, first_request, second_request):
        assert secret not in dump
    assert SECRET not in dump
    # Nor does the server's log hold any of them.
    log = live.proc.log()
    for secret in (lease["token"], waiting["ticket"], ticket_mac, first_request, second_request, SECRET):
        assert secret not in log


def test_what_a_copy_of_the_database_holds_opens_nothing_on_the_live_server(live: Live) -> None:
    with live.proc.client(CLIENT_KEY) as http:
        lease, waiting, _, _ = _holder_and_waiter(http)
        dump, rows = live.copy(), live.rows()
        # What someone holding the copy (and a client key) would try: every token- or ticket-shaped string in it,
        # every value of the lease's and the tickets' rows, and the stored request_ids as request_ids.
        found = set(re.findall(r"[kt]_[A-Za-z0-9_.\-]{8,}", dump))
        values = {str(v) for table in rows.values() for row in table for v in row.values() if v not in (None, "")}
        request_ids = {row["request_id"] for row in rows["tickets"] if row["request_id"]}
        assert request_ids, "the copy should hold the tickets' request_ids (as digests)"
        for candidate in sorted(found | values):
            assert problem(_release(http, lease["id"], candidate)) == (403, "wrong_token"), candidate
            assert problem(_renew(http, lease["id"], candidate)) == (403, "wrong_token"), candidate
            if len(candidate) <= 200:
                taken = post(http, environment="uat", ticket=candidate)
                assert problem(taken) == (410, "ticket_gone"), (candidate, taken.text)
            if re.fullmatch(r"[A-Za-z0-9_.\-]+", candidate):
                assert http.delete(f"/v1/tickets/{candidate}").status_code == 204
        for request_id in request_ids:
            answer = post(http, environment="uat", request_id=request_id, queue=False)
            # Not the lease nor the place that request_id stands for: a request of its own, refused as busy.
            assert problem(answer) == (409, "busy"), answer.text
        # Nothing changed: the lease is live and the ticket still waits.
        assert lease_state(http, lease["id"])["state"] == "active"
        assert queue_seqs(http, "uat") == [waiting["seq"]]
        assert _renew(http, lease["id"], lease["token"]).status_code == 200


def test_a_client_coming_back_with_its_request_id_or_ticket_gets_a_working_token(live: Live) -> None:
    with live.proc.client(CLIENT_KEY) as http:
        lease, waiting, first_request, second_request = _holder_and_waiter(http)
        again = granted(http, environment="uat", request_id=first_request)
        assert (again["id"], again["token"]) == (lease["id"], lease["token"])
        assert queued(http, environment="uat", request_id=second_request)["ticket"] == waiting["ticket"]
        assert queued(http, environment="uat", ticket=waiting["ticket"])["ticket"] == waiting["ticket"]
        assert _release(http, lease["id"], again["token"]).status_code == 204
        # Granted while its client was away: collected with the ticket, then again with the request_id.
        collected = granted(http, environment="uat", ticket=waiting["ticket"])
        repeat = granted(http, environment="uat", request_id=second_request)
        assert repeat["token"] == collected["token"]
        assert _renew(http, collected["id"], repeat["token"]).status_code == 200
        assert _release(http, collected["id"], collected["token"]).status_code == 204
        # The text answers carry the same token and ticket.
        third = granted(http, environment="uat", request_id="text")
        text = http.post(
            "/v1/leases", json={"environment": "uat", "request_id": "text"}, headers={"Accept": "text/plain"}
        )
        assert f"CALL_ME_LEASE_TOKEN='{third['token']}'" in text.text


# -- files ---------------------------------------------------------------------------------------------------


def test_the_database_its_companions_and_the_secret_file_are_created_0600(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path)
    before = os.umask(0o022)  # the usual umask, under which a file is created 0644 unless asked otherwise
    try:
        proc.start()
    finally:
        os.umask(before)
    try:
        with proc.client(CLIENT_KEY) as http:
            lease = granted(http, environment="uat")  # a write: -wal and -shm exist now
            assert _release(http, lease["id"], lease["token"]).status_code == 204
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir() if p.name.startswith("call-me.db")}
        assert set(files) >= {"call-me.db", "call-me.db-wal", "call-me.db-shm", "call-me.db.lock", "call-me.db.secret"}
        assert files == dict.fromkeys(files, 0o600), {name: oct(mode) for name, mode in files.items()}
        assert len((tmp_path / "call-me.db.secret").read_text().strip()) >= 32
    finally:
        proc.kill()


def test_postgres_refuses_to_start_without_a_secret_with_one_line(tmp_path: Path) -> None:
    # Port 1: nothing is ever reached; the refusal comes before the database is.
    proc = ServerProcess(tmp_path, database="postgresql://callme@127.0.0.1:1/callme")
    proc.env.pop("CALL_ME_SECRET", None)
    proc.env.pop("CALL_ME_SECRET_FILE", None)
    proc.start(wait=False)
    assert proc.proc is not None
    assert proc.proc.wait(30) == 2
    lines = [line for line in proc.log().splitlines() if line.startswith("call-me-server:")]
    assert len(lines) == 1, proc.log()
    assert "CALL_ME_SECRET" in lines[0]
    assert "PostgreSQL" in lines[0]
    assert "every replica" in lines[0]


def test_a_secret_is_refused_when_short_never_shown_and_listed_in_the_help() -> None:
    base = {"API_KEY": "k" * 8}
    with pytest.raises(ConfigError, match="CALL_ME_SECRET: must be at least 32 characters") as short:
        load({**base, "CALL_ME_SECRET": "too-short-a-secret"})
    assert "too-short-a-secret" not in str(short.value)
    with pytest.raises(ConfigError, match="CALL_ME_SECRET_PREVIOUS"):
        load({**base, "CALL_ME_SECRET": SECRET, "CALL_ME_SECRET_PREVIOUS": "short"})
    with pytest.raises(ConfigError, match="not both"):
        load({**base, "CALL_ME_SECRET": SECRET, "CALL_ME_SECRET_FILE": "/somewhere"})
    shown = subprocess.run(
        [sys.executable, "-m", "callme.server.main", "--help"], capture_output=True, text=True, timeout=20, check=True
    )
    for setting in ("CALL_ME_SECRET ", "CALL_ME_SECRET_FILE", "CALL_ME_SECRET_PREVIOUS"):
        assert setting in shown.stdout
    settings = load({**base, "CALL_ME_SECRET": SECRET, "CALL_ME_SECRET_PREVIOUS": SECRET[::-1]})
    assert SECRET not in repr(settings)
    assert SECRET[::-1] not in repr(settings)


# -- the secret across restarts -----------------------------------------------------------------------------


def test_the_same_secret_keeps_tokens_across_a_restart_and_another_makes_them_wrong(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path)
    proc.start()
    try:
        with proc.client(CLIENT_KEY) as http:
            lease, waiting, first_request, _ = _holder_and_waiter(http)
        # The same secret (the file made at first start): the token and the ticket id are good after a restart.
        proc.stop()
        proc.start()
        with proc.client(CLIENT_KEY) as http:
            assert _renew(http, lease["id"], lease["token"]).status_code == 200
            assert queued(http, environment="uat", ticket=waiting["ticket"])["seq"] == waiting["seq"]
        # Another secret (docs/api.md): the lease's token is wrong_token and the ticket id names no ticket; the
        # client that comes back with its request_id gets the lease with a token that works.
        old_secret = (tmp_path / "call-me.db.secret").read_text().strip()
        proc.stop()
        proc.env["CALL_ME_SECRET"] = secrets.token_urlsafe(32)
        proc.start()
        with proc.client(CLIENT_KEY) as http:
            assert problem(_renew(http, lease["id"], lease["token"])) == (403, "wrong_token")
            assert problem(post(http, environment="uat", ticket=waiting["ticket"])) == (410, "ticket_gone")
            again = granted(http, environment="uat", request_id=first_request)
            assert again["id"] == lease["id"]
            assert again["token"] != lease["token"]
            assert _renew(http, lease["id"], again["token"]).status_code == 200
        # With the old one as CALL_ME_SECRET_PREVIOUS (a rotation), both are good.
        proc.stop()
        proc.env["CALL_ME_SECRET_PREVIOUS"] = old_secret
        proc.start()
        with proc.client(CLIENT_KEY) as http:
            assert _renew(http, lease["id"], lease["token"]).status_code == 200
            assert _renew(http, lease["id"], again["token"]).status_code == 200
            assert queued(http, environment="uat", ticket=waiting["ticket"])["seq"] == waiting["seq"]
            assert _release(http, lease["id"], lease["token"]).status_code == 204
        assert old_secret not in proc.log()
        assert proc.env["CALL_ME_SECRET"] not in proc.log()
    finally:
        proc.kill()


# -- a database from before ----------------------------------------------------------------------------------


class OldRows:
    """What a schema-4 database holds for a lease taken with a request_id and a ticket waiting behind it."""

    def __init__(self) -> None:
        now = time.time()
        self.token = "k_" + secrets.token_urlsafe(24)  # as call-me made them before
        self.lease_id = "l_" + secrets.token_hex(10)
        self.granted_ticket, self.waiting_ticket = ("t_" + secrets.token_urlsafe(24) for _ in range(2))
        self.granted_request, self.waiting_request = "run-é-🙂-" + uuid.uuid4().hex, str(uuid.uuid4())
        self.lease = (
            self.lease_id, "uat", self.token, "old-holder", "{}", 1, 3600, now - 10, now + 3600, now - 10,
            CLIENT_NAME, "active", None, self.granted_ticket, 1, None,
        )  # fmt: skip
        self.tickets = [
            (self.granted_ticket, 1, CLIENT_NAME, "uat", None, "old-holder", 3600, 0, "{}", now - 10, now - 10,
             self.granted_request, "granted", self.lease_id, None),
            (self.waiting_ticket, 2, CLIENT_NAME, "uat", None, "old-waiter", 3600, 0, "{}", now - 5, now,
             self.waiting_request, "waiting", None, None),
        ]  # fmt: skip
        self.environment = ("uat", 1, "[]", "", "{}", False, None, False, now - 100, now - 100, now - 10)


def _inserts(mark: str) -> tuple[str, str, str]:
    """INSERTs of an environment, a lease and a ticket of schema 4, with `mark` as the placeholder."""
    return (
        f"INSERT INTO environments VALUES ({', '.join([mark] * 11)})",  # noqa: S608 - constant columns, bound values
        f"INSERT INTO leases ({LEASE_V4}) VALUES ({', '.join([mark] * 16)})",  # noqa: S608
        f"INSERT INTO tickets ({TICKET_V4}) VALUES ({', '.join([mark] * 15)})",  # noqa: S608
    )


def _old_sqlite(path: Path, rows: OldRows) -> None:
    """A database as the server of schema 4 left it: its migrations, then its rows with clear secrets."""
    assert len(MIGRATIONS) >= 5, "the database from before is schema 4, the version before secrets at rest"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for step in MIGRATIONS[:4]:
            for statement in statements(step.sqlite):
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '4')")
        environment, lease, ticket = _inserts("?")
        conn.execute(environment, rows.environment)
        conn.execute(lease, rows.lease)
        conn.executemany(ticket, rows.tickets)
        conn.execute("UPDATE counters SET value = CASE name WHEN 'fence' THEN 1 ELSE 2 END")
        conn.commit()


def _empty_postgres(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def _old_postgres(url: str, rows: OldRows) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for step in MIGRATIONS[:4]:
            for statement in statements(step.postgres):
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '4')")
        environment, lease, ticket = _inserts("%s")
        conn.execute(environment, rows.environment)
        conn.execute(lease, rows.lease)
        for values in rows.tickets:
            conn.execute(ticket, values)
        conn.execute("SELECT setval('fence_seq', 1), setval('ticket_seq', 2)")


@pytest.fixture(params=["sqlite", "postgres"])
def old(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServerProcess, OldRows, Callable[[], Any]]]:
    rows = OldRows()
    if request.param == "sqlite":
        path = tmp_path / "call-me.db"
        _old_sqlite(path, rows)
        proc = ServerProcess(tmp_path, database=str(path))
        read = _sqlite_rows(proc)
    else:
        url = request.getfixturevalue("pg_url")  # a database of its own, dropped at the end; emptied here
        _empty_postgres(url)
        _old_postgres(url, rows)
        proc = ServerProcess(tmp_path, database=url, env={"CALL_ME_SECRET": SECRET})
        read = _pg_rows(url)
    before = read()
    proc.start()
    try:
        yield proc, rows, lambda: (before, read())
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()


def test_an_old_database_keeps_its_holders_and_waiters_working(old: tuple[ServerProcess, OldRows, Any]) -> None:
    proc, rows, read = old
    # The migration changed nothing but the request_ids, now kept as their SHA-256.
    before, after = read()
    stored = {r["request_id"] for r in after["tickets"]}
    assert rows.granted_request not in stored
    assert rows.waiting_request not in stored
    assert len([r for r in after["tickets"] if r["request_id"].startswith("sha256:")]) == 2
    for table in ("leases", "tickets"):
        unchanged = [{k: v for k, v in r.items() if k != "request_id"} for r in before[table]]
        # Columns that later steps added (webhooks' alert marks, groups' ids) are NULL in a row from before.
        columns = set(unchanged[0]) if unchanged else set()
        assert all(v is None for r in after[table] for k, v in r.items() if k not in columns | {"request_id"})
        assert [{k: v for k, v in r.items() if k in columns} for r in after[table]] == unchanged
    with proc.client(CLIENT_KEY) as http:
        # The holder: its request_id (kept in clear before) finds its lease, with the token it was given then.
        old_lease = {"environment": "uat", "holder": "old-holder", "ttl": 3600, "request_id": rows.granted_request}
        again = granted(http, **old_lease)
        assert (again["id"], again["token"]) == (rows.lease_id, rows.token)
        assert _renew(http, rows.lease_id, rows.token).status_code == 200
        # The waiter: its ticket id of the old shape, and its request_id, still find its place.
        assert queued(http, environment="uat", ticket=rows.waiting_ticket)["ticket"] == rows.waiting_ticket
        waiter = {"environment": "uat", "holder": "old-waiter", "ttl": 3600, "request_id": rows.waiting_request}
        assert queued(http, **waiter)["ticket"] == rows.waiting_ticket
        assert _release(http, rows.lease_id, rows.token).status_code == 204
        # The new lease it is granted has a derived token, which works and is stored nowhere.
        lease = granted(http, environment="uat", ticket=rows.waiting_ticket)
        assert lease["token"] != rows.token
        assert _renew(http, lease["id"], lease["token"]).status_code == 200
    [stored] = [r for r in read()[1]["leases"] if r["id"] == lease["id"]]
    assert stored["token"] == ""


def test_a_copied_database_file_is_no_way_around_the_secret(tmp_path: Path) -> None:
    """A copy of the SQLite file started by a server of its own (a restored backup) makes a secret of its own:
    the tokens and ticket ids of the original are refused there too."""
    proc = ServerProcess(tmp_path)
    proc.start()
    try:
        with proc.client(CLIENT_KEY) as http:
            lease, waiting, _, _ = _holder_and_waiter(http)
        proc.stop()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        for suffix in ("", "-wal"):
            if Path(proc.database + suffix).exists():
                shutil.copy(proc.database + suffix, elsewhere / f"call-me.db{suffix}")
        copy = ServerProcess(elsewhere)
        copy.start()
        try:
            with copy.client(CLIENT_KEY) as http:
                assert problem(_release(http, lease["id"], lease["token"])) == (403, "wrong_token")
                assert problem(post(http, environment="uat", ticket=waiting["ticket"])) == (410, "ticket_gone")
            assert "event=secret_created" in copy.log()
            assert "database that already existed" in copy.log()
        finally:
            copy.kill()
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
