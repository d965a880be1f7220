"""Webhooks end to end: a real server (SQLite file or PostgreSQL) posts to a real HTTP receiver on 127.0.0.1.

Each event kind arrives signed; a 500 is retried; a delivery survives a restart of the server; a receiver that
hangs is given up on per attempt and never holds up a lock operation; the log shows it all; the secret is never
shown, logged or stored in clear; bad declarations are refused with the field named.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .receiver import Receiver
from .serverproc import CLIENT_KEY, DEFAULT_CONFIG, ServerProcess, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SECRET = "whsec-0123456789-abcdef"
EVENTS = ["environment.maintenance", "lease.expired", "lease.forced", "lease.held_too_long", "queue.waiting_too_long"]
# Short retries and a short timeout per attempt, so that the tests see them happen.
FAST = {"CALL_ME_WEBHOOK_BACKOFF": "0.2", "CALL_ME_WEBHOOK_BACKOFF_MAX": "0.5", "CALL_ME_WEBHOOK_TIMEOUT": "1"}


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "call-me.db")
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@contextlib.contextmanager
def serving(tmp_path: Path, database: str, *, config: str = DEFAULT_CONFIG, **env: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path, database=database, config=config, env={**FAST, **env})
    proc.start()
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()


def put_hook(admin: httpx.Client, url: str, events: list[str] = EVENTS, **extra: Any) -> dict[str, Any]:
    answer = admin.put("/v1/webhooks/ops", json={"url": url, "events": events, "secret": SECRET, **extra})
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def log_of(admin: httpx.Client, name: str = "ops") -> list[dict[str, Any]]:
    answer = admin.get(f"/v1/webhooks/{name}/deliveries")
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["deliveries"]
    return found


def wait_log(admin: httpx.Client, done: Any, timeout: float = 30.0, name: str = "ops") -> list[dict[str, Any]]:
    """The hook's log once `done(log)` holds; fails with the log after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        log = log_of(admin, name)
        if done(log):
            return log
        assert time.monotonic() < deadline, f"the log never got there: {log}"
        time.sleep(0.1)


def force_release(admin: httpx.Client, environment: str, **acquire: Any) -> dict[str, Any]:
    lease: dict[str, Any] = admin.post("/v1/leases", json={"environment": environment, **acquire}).json()
    assert admin.delete(f"/v1/leases/{lease['id']}", params={"force": "true"}).status_code == 204
    return lease


def test_a_hook_declared_in_the_file_hears_of_a_forced_release_signed(
    tmp_path: Path, database: str, receiver: Receiver
) -> None:
    config = DEFAULT_CONFIG + (
        f'\n[[webhooks]]\nname = "from-file"\nurl = "{receiver.url}"\nevents = ["lease.forced"]\nsecret = "{SECRET}"\n'
    )
    with serving(tmp_path, database, config=config) as server, server.client() as admin:
        listed = admin.get("/v1/webhooks").json()["webhooks"]
        assert [(h["name"], h["declared_by"], h["secret"]) for h in listed] == [("from-file", "config", "set")]
        lease = force_release(admin, "uat", holder="org/app#41", metadata={"run_url": "https://ci.example/run/41"})

        (got,) = receiver.wait_for(1)
        assert got.signed_with(SECRET)
        assert not got.signed_with(SECRET + "x")
        body = got.json
        assert body["event"] == got.headers["x-call-me-event"] == "lease.forced"
        assert body["environment"] == "uat"
        assert body["holder"] == "org/app#41"
        assert body["metadata"] == {"run_url": "https://ci.example/run/41"}
        assert body["lease"]["id"] == lease["id"]
        assert body["actor"] == "admin"
        assert body["id"] == got.headers["x-call-me-delivery"]
        # The timestamp header repeats the signed `sent_at` of the body, for a receiver to refuse old replays.
        assert str(body["sent_at"]) == got.headers["x-call-me-timestamp"]
        log = wait_log(admin, lambda log: log and log[0]["state"] == "delivered", name="from-file")
        assert [(d["id"], d["event"], d["attempts"], d["last_status"]) for d in log] == [
            (body["id"], "lease.forced", 1, 200)
        ]


def test_each_event_kind_reaches_the_hook_signed(tmp_path: Path, database: str, receiver: Receiver) -> None:
    with serving(tmp_path, database) as server, server.client() as admin, server.client(CLIENT_KEY) as client:
        put_hook(admin, receiver.url)
        # Thresholds of one second on this environment (the defaults are hours).
        admin.put("/v1/environments/uat", json={"held_too_long": 1, "waiting_too_long": 1})
        held = client.post("/v1/leases", json={"environment": "uat", "ttl": 3, "holder": "job-a"}).json()
        waiting = client.post("/v1/leases", json={"environment": "uat", "holder": "job-b"})
        assert waiting.status_code == 202
        by_kind = {}
        for kind in ("lease.held_too_long", "queue.waiting_too_long", "lease.expired"):  # job-a never renews
            (by_kind[kind],) = receiver.wait_for(1, kind=kind)
        admin.put("/v1/environments/uat", json={"maintenance": True, "note": "db upgrade"})
        (by_kind["environment.maintenance"],) = receiver.wait_for(1, kind="environment.maintenance")
        force_release(admin, "other", holder="job-c")
        (by_kind["lease.forced"],) = receiver.wait_for(1, kind="lease.forced")

        assert all(got.signed_with(SECRET) for got in by_kind.values())
        assert by_kind["lease.held_too_long"].json["lease"]["id"] == held["id"]
        assert by_kind["lease.held_too_long"].json["lease"]["held_for"] >= 1
        assert by_kind["queue.waiting_too_long"].json["holder"] == "job-b"
        assert by_kind["queue.waiting_too_long"].json["ticket"]["waited"] >= 1
        assert by_kind["lease.expired"].json["lease"]["id"] == held["id"]
        assert by_kind["environment.maintenance"].json["maintenance"] is True
        assert by_kind["environment.maintenance"].json["note"] == "db upgrade"
        assert by_kind["lease.forced"].json["holder"] == "job-c"
        # Once per lease and per ticket: the sweep looks every second, and tells no one twice (job-b's lease, granted
        # when job-a's expired, is held too long in its turn: once too).
        time.sleep(2.5)
        leases = [r.json["lease"]["id"] for r in receiver.received if r.json["event"] == "lease.held_too_long"]
        assert leases.count(held["id"]) == 1
        assert len(leases) == len(set(leases))
        tickets = [r.json["ticket"]["seq"] for r in receiver.received if r.json["event"] == "queue.waiting_too_long"]
        assert tickets == [waiting.json()["seq"]]
        log = wait_log(admin, lambda log: all(d["state"] == "delivered" for d in log))
        assert {d["event"] for d in log} == set(EVENTS)


def test_a_500_is_retried_until_delivered(tmp_path: Path, database: str) -> None:
    receiver = Receiver(answers=[500, 503])
    try:
        with serving(tmp_path, database) as server, server.client() as admin:
            put_hook(admin, receiver.url, events=["lease.forced"])
            force_release(admin, "uat")
            attempts = receiver.wait_for(3)
            assert len({r.headers["x-call-me-delivery"] for r in attempts}) == 1  # one delivery, tried thrice
            assert all(r.signed_with(SECRET) for r in attempts)
            (entry,) = wait_log(admin, lambda log: log and log[0]["state"] == "delivered")
            assert (entry["attempts"], entry["last_status"], entry["last_error"]) == (3, 200, None)
    finally:
        receiver.close()


def test_a_hook_that_keeps_failing_is_given_up_after_its_attempts(tmp_path: Path) -> None:
    receiver = Receiver(otherwise=500)
    try:
        database = str(tmp_path / "call-me.db")
        with serving(tmp_path, database, CALL_ME_WEBHOOK_ATTEMPTS="3") as server, server.client() as admin:
            put_hook(admin, receiver.url, events=["lease.forced"])
            force_release(admin, "uat")
            (entry,) = wait_log(admin, lambda log: log and log[0]["state"] == "failed")
            assert (entry["attempts"], entry["last_status"]) == (3, 500)
            assert entry["last_error"] == "answered HTTP 500"
            assert entry["next_attempt_at"] is None
            assert len(receiver.received) == 3
            assert "event=webhook_gave_up hook=ops" in server.log()
    finally:
        receiver.close()


def test_a_delivery_survives_a_restart_of_the_server(tmp_path: Path, database: str) -> None:
    port = free_port()  # nothing listens there yet: the first attempts are refused
    url = f"http://127.0.0.1:{port}/hook"
    server = ServerProcess(tmp_path, database=database, env=FAST)
    server.start()
    try:
        with server.client() as admin:
            put_hook(admin, url, events=["lease.forced"])
            force_release(admin, "uat", holder="survivor")
            wait_log(admin, lambda log: log and log[0]["attempts"] >= 1 and log[0]["state"] == "pending")
        server.kill()  # SIGKILL: nothing is flushed or handed over
        receiver = Receiver(port=port)
        try:
            server.start()
            (got,) = receiver.wait_for(1)
            assert got.json["holder"] == "survivor"
            assert got.signed_with(SECRET)
            with server.client() as admin:
                (entry,) = wait_log(admin, lambda log: log and log[0]["state"] == "delivered")
                assert entry["attempts"] >= 2
        finally:
            receiver.close()
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


def test_a_server_killed_mid_attempt_takes_its_delivery_over_at_start_up(tmp_path: Path) -> None:
    # A long timeout: the killed process's claim would hold the delivery for 25 s; a SQLite server, the only
    # process on its file, takes it over at once instead.
    receiver = Receiver(answers=["hang"])
    server = ServerProcess(tmp_path, env={**FAST, "CALL_ME_WEBHOOK_TIMEOUT": "20"})
    server.start()
    try:
        with server.client() as admin:
            put_hook(admin, receiver.url, events=["lease.forced"])
            force_release(admin, "uat")
            receiver.wait_hanging()
        server.kill()
        server.start()
        first, again = receiver.wait_for(2, timeout=15)
        assert first.headers["x-call-me-delivery"] == again.headers["x-call-me-delivery"]  # at least once
        with server.client() as admin:
            (entry,) = wait_log(admin, lambda log: log and log[0]["state"] == "delivered", timeout=15)
            assert entry["attempts"] == 1  # the killed attempt never got to record itself
    finally:
        receiver.close()
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


def test_a_hanging_receiver_times_out_and_never_holds_up_a_lock_operation(tmp_path: Path, database: str) -> None:
    receiver = Receiver(otherwise="hang")
    try:
        with serving(tmp_path, database) as server, server.client(CLIENT_KEY) as client, server.client() as admin:
            put_hook(admin, receiver.url, events=["lease.forced"])
            force_release(admin, "uat")
            receiver.wait_hanging()
            # While the receiver holds a delivery open, every lock operation completes.
            for _ in range(20):
                lease = client.post("/v1/leases", json={"environment": "uat", "queue": False}, timeout=5)
                assert lease.status_code == 201, lease.text
                token = {"X-Lease-Token": lease.json()["token"]}
                assert client.delete(f"/v1/leases/{lease.json()['id']}", headers=token, timeout=5).status_code == 204
            assert receiver.hanging >= 1, "the lock operations were meant to run while the receiver hung"
            # The attempt was given up after its timeout, and is tried again.
            wait_log(admin, lambda log: log and log[0]["last_error"] == "no answer within 1 s")
            receiver.release()
            (entry,) = wait_log(admin, lambda log: log and log[0]["state"] == "delivered")
            assert entry["attempts"] >= 2
    finally:
        receiver.close()


def test_a_hanging_receiver_never_holds_up_another_hooks_deliveries(tmp_path: Path, database: str) -> None:
    hanging, healthy = Receiver(otherwise="hang"), Receiver()
    try:
        # A long timeout: the hanging receiver's attempts stay in flight for the whole test.
        with serving(tmp_path, database, CALL_ME_WEBHOOK_TIMEOUT="60") as server, server.client() as admin:
            for name, receiver in (("a-hangs", hanging), ("b-answers", healthy)):
                body = {"url": receiver.url, "events": ["lease.forced"], "secret": SECRET}
                assert admin.put(f"/v1/webhooks/{name}", json=body).status_code == 201
            for i in range(12):  # more than every attempt a replica has in flight at once
                force_release(admin, "uat", holder=f"job-{i}")
            got = healthy.wait_for(12, timeout=20)
            assert sorted(r.json["holder"] for r in got) == sorted(f"job-{i}" for i in range(12))
            assert 1 <= hanging.hanging <= 2  # a hook has two attempts in flight at most
    finally:
        hanging.close()
        healthy.close()


def test_the_dashboard_shows_each_hook_and_its_delivery_log_to_admins(tmp_path: Path) -> None:
    receiver = Receiver(answers=[500])
    try:
        with serving(tmp_path, str(tmp_path / "call-me.db")) as server, server.client() as admin:
            put_hook(admin, receiver.url + "/token-of-the-receiver", events=["lease.forced"])
            force_release(admin, "uat")
            (entry,) = wait_log(admin, lambda log: log and log[0]["state"] == "delivered")
            page = admin.get("/ui/webhooks")
            assert page.status_code == 200
            text = page.text
            assert f"<code>{entry['id']}</code>" in text
            assert "<td>lease.forced</td>" in text
            assert "<td>delivered</td>" in text
            assert "<td>2</td>" in text  # attempts: the 500, then the 200
            assert "HTTP 200" in text
            assert f"http://127.0.0.1:{receiver.port}/…" in text
            assert "token-of-the-receiver" not in text  # only the scheme and host of a URL, which may be a secret
            assert SECRET not in text
            assert 'href="/ui/webhooks"' in admin.get("/").text
            with server.client(CLIENT_KEY) as client:
                assert client.get("/ui/webhooks").status_code == 403
                assert 'href="/ui/webhooks"' not in client.get("/").text
            assert httpx.get(server.url + "/ui/webhooks").status_code == 303
    finally:
        receiver.close()


def test_the_readme_verification_snippet_accepts_a_real_delivery_and_refuses_a_forged_one(
    tmp_path: Path, receiver: Receiver
) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("\n## Webhooks: hear about stuck environments first\n")
    opening = readme.index("```python\n", start) + len("```python\n")
    namespace: dict[str, Any] = {}
    exec(readme[opening : readme.index("```\n", opening)], namespace)  # noqa: S102 - README's own snippet
    verify = namespace["verify"]
    with serving(tmp_path, str(tmp_path / "call-me.db")) as server, server.client() as admin:
        put_hook(admin, receiver.url, events=["lease.forced"])
        force_release(admin, "uat", holder="checked")
        (got,) = receiver.wait_for(1)
    signature = got.headers["x-call-me-signature"]
    assert verify(SECRET, got.body, signature)["holder"] == "checked"
    with pytest.raises(ValueError, match="bad signature"):
        verify(SECRET, got.body.replace(b"checked", b"forged!"), signature)
    with pytest.raises(ValueError, match="bad signature"):
        verify("another-secret-entirely", got.body, signature)


def test_the_slack_format_is_one_line_of_text(tmp_path: Path, receiver: Receiver) -> None:
    with serving(tmp_path, str(tmp_path / "call-me.db")) as server, server.client() as admin:
        put_hook(admin, receiver.url, events=["lease.forced"], format="slack")
        force_release(admin, "uat", holder="org/app#7", metadata={"run_url": "https://ci.example/run/7"})
        (got,) = receiver.wait_for(1)
        assert set(got.json) == {"text"}
        assert got.json["text"] == (
            'call-me: the lease of org/app#7 on "uat" was forcibly ended by admin — https://ci.example/run/7'
        )
        assert got.signed_with(SECRET)
        # What a client chose stays text: no mention of everyone in the channel.
        force_release(admin, "uat", holder="<!channel> & co")
        (_, got) = receiver.wait_for(2)
        assert (
            got.json["text"] == 'call-me: the lease of &lt;!channel&gt; &amp; co on "uat" was forcibly ended by admin'
        )


def test_hooks_are_for_admins_and_never_show_their_secret(tmp_path: Path, receiver: Receiver) -> None:
    database = tmp_path / "call-me.db"
    with serving(tmp_path, str(database)) as server, server.client() as admin, server.client(CLIENT_KEY) as client:
        body = {"url": receiver.url, "events": ["lease.forced"], "secret": SECRET}
        assert client.put("/v1/webhooks/ops", json=body).status_code == 403
        assert client.get("/v1/webhooks").status_code == 403
        assert client.get("/v1/webhooks/ops/deliveries").status_code == 403
        made = admin.put("/v1/webhooks/ops", json=body)
        assert made.status_code == 201
        for answer in (made, admin.get("/v1/webhooks/ops"), admin.get("/v1/webhooks")):
            assert SECRET not in answer.text
            assert '"secret":"set"' in answer.text.replace(" ", "")
        changed = admin.put("/v1/webhooks/ops", json={**body, "events": ["lease.expired", "lease.forced"]})
        assert changed.status_code == 200
        assert changed.json()["events"] == ["lease.expired", "lease.forced"]
        assert admin.delete("/v1/webhooks/ops").status_code == 204
        assert admin.get("/v1/webhooks/ops").status_code == 404
        admin.put("/v1/webhooks/ops", json=body)
    # Stored sealed: not in the database, nor in its write-ahead log, nor in the server's log.
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("call-me.db*") if p.is_file())
    assert SECRET.encode() not in raw
    assert SECRET not in server.log()
    with sqlite3.connect(database) as conn:
        (sealed,) = conn.execute("SELECT secret FROM webhooks WHERE name = 'ops'").fetchone()
    assert sealed.startswith("s1.")


def test_a_hook_sealed_with_a_server_secret_now_gone_says_so(tmp_path: Path, receiver: Receiver) -> None:
    old, new = "the-old-server-secret-0123456789abcdef", "the-new-server-secret-0123456789abcdef"
    server = ServerProcess(tmp_path, env={**FAST, "CALL_ME_SECRET": old})
    server.start()
    try:
        with server.client() as admin:
            put_hook(admin, receiver.url, events=["lease.forced"])
        server.stop()
        server.env.update({"CALL_ME_SECRET": new, "CALL_ME_SECRET_PREVIOUS": old})  # a rotation: still opens
        server.start()
        with server.client() as admin:
            assert admin.get("/v1/webhooks/ops").json()["secret"] == "set"
            force_release(admin, "uat")
            assert receiver.wait_for(1)[0].signed_with(SECRET)
        server.stop()
        del server.env["CALL_ME_SECRET_PREVIOUS"]  # the old secret gone: the hook cannot sign any more
        server.start()
        with server.client() as admin:
            assert admin.get("/v1/webhooks/ops").json()["secret"] == "unreadable"
            force_release(admin, "uat")
            (entry, _) = wait_log(admin, lambda log: len(log) == 2 and log[0]["attempts"] >= 1)
            assert "sealed with another server secret" in entry["last_error"]
            assert len(receiver.received) == 1  # nothing unsigned (or signed with garbage) was sent
            assert (
                admin.put(
                    "/v1/webhooks/ops", json={"url": receiver.url, "events": ["lease.forced"], "secret": SECRET}
                ).json()["secret"]
                == "set"
            )
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"url": "ftp://hooks.example/x"}, "url"),
        ({"url": "hooks.example/x"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "https://user:pw@hooks.example/x"}, "url"),
        # Hosts httpx cannot send to (a bad A-label, a zero-width space): refused, not retried at full speed for ever.
        ({"url": "http://xn--zz.com/secret-path"}, "url"),
        ({"url": "http://hooks\u200b.example.com/T0KEN"}, "url"),
        ({"url": 7}, "url"),
        ({"events": []}, "events"),
        ({"events": ["lease.acquired"]}, "events"),
        ({"events": "lease.forced"}, "events"),
        ({"secret": "short"}, "secret"),
        ({"format": "xml"}, "format"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_declaration_is_refused_naming_the_field(
    server: ServerProcess, change: dict[str, Any], field: str
) -> None:
    body = {"url": "https://hooks.example/x", "events": ["lease.forced"], "secret": SECRET, **change}
    with server.client() as admin:
        answer = admin.put("/v1/webhooks/ops", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == field
        assert admin.get("/v1/webhooks/ops").status_code == 404


def test_a_bad_name_or_limit_is_refused(server: ServerProcess) -> None:
    body = {"url": "https://hooks.example/x", "events": ["lease.forced"], "secret": SECRET}
    with server.client() as admin:
        assert admin.put("/v1/webhooks/-bad", json=body).status_code == 422
        assert admin.put("/v1/webhooks/ok", json=body).status_code == 201
        assert admin.get("/v1/webhooks/ok/deliveries", params={"limit": "0"}).status_code == 422
        assert admin.get("/v1/webhooks/ok/deliveries", params={"limit": "x"}).status_code == 422
        assert admin.get("/v1/webhooks/ok/deliveries", params={"limit": "5"}).status_code == 200


def test_the_file_sets_its_hooks_at_each_start_and_leaves_the_apis_alone(tmp_path: Path) -> None:
    def hook_toml(name: str, url: str) -> str:
        return f'\n[[webhooks]]\nname = "{name}"\nurl = "{url}"\nevents = ["lease.forced"]\nsecret = "{SECRET}"\n'

    env_toml = '\n[[environments]]\nname = "uat"\nheld_too_long = 120\n'
    config = (
        DEFAULT_CONFIG
        + env_toml
        + hook_toml("kept", "https://a.example/1")
        + hook_toml("dropped", "https://b.example/")
    )
    server = ServerProcess(tmp_path, config=config)
    server.start()
    try:
        with server.client() as admin:
            assert admin.get("/v1/environments/uat").json()["held_too_long"] == 120
            # An admin changes a file's hook through the API; and adds one of the API's own.
            body = {"url": "https://a.example/changed", "events": ["lease.expired"], "secret": SECRET}
            assert admin.put("/v1/webhooks/kept", json=body).status_code == 200
            assert admin.put("/v1/webhooks/own", json=body).status_code == 201
        server.stop()
        # The file changes: "kept" gets a new URL, "dropped" is no longer declared.
        (tmp_path / "call-me.toml").write_text(DEFAULT_CONFIG + hook_toml("kept", "https://a.example/2"))
        server.start()
        with server.client() as admin:
            hooks = {h["name"]: h for h in admin.get("/v1/webhooks").json()["webhooks"]}
            assert sorted(hooks) == ["kept", "own"]  # the file's "dropped" went; the API's own stays
            assert (hooks["kept"]["url"], hooks["kept"]["declared_by"]) == ("https://a.example/2", "config")
            assert (hooks["own"]["url"], hooks["own"]["declared_by"]) == ("https://a.example/changed", "api")
            assert hooks["kept"]["secret"] == hooks["own"]["secret"] == "set"
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


def test_a_bad_hook_in_the_file_stops_the_start_naming_it(tmp_path: Path) -> None:
    config = DEFAULT_CONFIG + '\n[[webhooks]]\nname = "x"\nurl = "ftp://h/x"\nevents = ["lease.forced"]\nsecret = "s"\n'
    proc = ServerProcess(tmp_path, config=config)
    proc.start(wait=False)
    assert proc.proc is not None
    assert proc.proc.wait(15) == 2
    assert "webhooks[0].url: must start with http:// or https://" in proc.log()


def test_replicas_on_postgresql_deliver_each_row_once(tmp_path: Path, pg_url: str, receiver: Receiver) -> None:
    replicas = [ServerProcess(tmp_path, database=pg_url, env=FAST) for _ in range(2)]
    for proc in replicas:
        proc.start()
    admins = [proc.client() for proc in replicas]
    try:
        put_hook(admins[0], receiver.url)
        admins[1].put("/v1/environments/long", json={"held_too_long": 1})
        held = admins[1].post("/v1/leases", json={"environment": "long", "holder": "slow-job"}).json()
        for i in range(10):
            force_release(admins[i % 2], f"env-{i}", holder=f"job-{i}")
        receiver.wait_for(10, kind="lease.forced")
        receiver.wait_for(1, kind="lease.held_too_long")
        wait_log(admins[1], lambda log: len(log) == 11 and all(d["state"] == "delivered" for d in log))
        time.sleep(2.5)  # both replicas sweep and claim every second: neither tells anything again
        ids = [r.headers["x-call-me-delivery"] for r in receiver.received]
        assert len(ids) == len(set(ids)) == 11
        assert sorted(r.json["holder"] for r in receiver.received if r.json["event"] == "lease.forced") == sorted(
            f"job-{i}" for i in range(10)
        )
        (alert,) = [r.json for r in receiver.received if r.json["event"] == "lease.held_too_long"]
        assert alert["lease"]["id"] == held["id"]
    finally:
        for admin in admins:
            admin.close()
        for proc in replicas:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.kill()
