"""Secrets stay out of what the server prints."""

from __future__ import annotations

import time
from pathlib import Path

from .serverproc import ServerProcess


def test_startup_log_never_shows_a_password_given_as_url_parameter(tmp_path: Path) -> None:
    """libpq URLs may carry the password as ?password=...; main.py's start-up line must redact it too."""
    secret = "hunter2-very-secret-db-password"
    proc = ServerProcess(tmp_path, database=f"postgresql://callme@127.0.0.1:1/callme?password={secret}")
    proc.start(wait=False)
    try:
        assert proc.proc is not None
        proc.proc.wait(timeout=30)  # the store cannot connect (port 1), so the server exits
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 5
    while "starting on" not in proc.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = proc.log()
    assert "starting on" in log
    assert secret not in log


def test_records_never_show_their_secrets_in_a_repr() -> None:
    from callme.server.model import Lease, Ticket

    lease = Lease(
        id="l_1", environment="uat", token="k_secret-token", holder="h", metadata={}, fence=1, ttl=60,
        acquired_at=0.0, expires_at=60.0, touched_at=0.0, key_name="ci",
    )  # fmt: skip
    ticket = Ticket(
        id="t_secret-ticket", seq=1, key_name="ci", environment="uat", label=None, holder="h", ttl=60,
        priority=0, metadata={}, enqueued_at=0.0, seen_at=0.0,
    )  # fmt: skip
    assert "k_secret-token" not in repr(lease)
    assert "t_secret-ticket" not in repr(ticket)


def test_a_webhook_never_shows_its_secret_in_a_repr() -> None:
    from callme.server.model import Webhook
    from callme.server.settings import WebhookConfig
    from callme.server.webhooks import change

    declared = change({"url": "https://h.example/x", "events": ["lease.forced"], "secret": "whsec-in-clear-0123"})
    stored = Webhook(name="ops", url="https://h.example/x", events=("lease.forced",), sealed_secret="s1.sealed")
    assert "whsec-in-clear-0123" not in repr(declared)
    assert "whsec-in-clear-0123" not in repr(WebhookConfig("ops", declared))
    assert "s1.sealed" not in repr(stored)
