"""What each `call-me` command does, and how errors become one line and an exit code."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TextIO

from . import pipeline
from .client import Client
from .config import Settings, resolve
from .constants import ExitCode
from .errors import (
    APIError,
    CallMeError,
    ConfigError,
    Forbidden,
    Gone,
    Invalid,
    LeaseGone,
    LeaseLost,
    NoRoute,
    NotFound,
    NotGranted,
    TooLarge,
    TransportError,
    Unauthorized,
    WaitTimeout,
    WrongToken,
)
from .format import clock_time, env_lines, go_duration, group_variables, lease_variables
from .interrupt import Terminated
from .models import Group, Lease, Waiting
from .releasing import release_or_report
from .state import StateFile, default_path
from .views import (
    describe,
    environment_detail,
    environment_summary,
    environments_table,
    history_table,
    to_json,
    waiting_line,
)

logger = logging.getLogger("callme.cli")
WAITING_LINE_REPEAT = 60.0  # seconds before an unchanged waiting line is printed again


class UsageError(CallMeError):
    """The command line asks for something that cannot be done as asked."""


class Context:
    """One command's arguments, settings and the things it makes from them."""

    def __init__(self, prog: str, args: argparse.Namespace, settings: Settings) -> None:
        self.prog = prog
        self.args = args
        self.settings = settings
        state_path = getattr(args, "state_file", None)
        self.state = StateFile(Path(state_path) if state_path else default_path(os.environ))

    def client(self) -> Client:
        return self.settings.client()

    def remember(self, lease: Lease | Group) -> None:
        """Keep the lease (each of a group's) for a later `release ENV`; a failure here must not lose the lease."""
        if isinstance(lease, Group):
            for one in lease.leases:
                self.remember(one)
            return
        try:
            self.state.add(self.settings.url, lease)
        except (OSError, CallMeError) as exc:
            logger.warning(
                "could not keep lease %s in %s (%s); release it by name (`release %s`) or with --lease and --token",
                lease.id,
                self.state.path,
                exc,
                lease.environment,
            )

    def acquire_options(self) -> dict[str, Any]:
        args = self.args
        return {
            "label": args.label,
            "ttl": args.ttl,
            "holder": args.holder,
            "priority": args.priority,
            "metadata": _with_pipeline(_metadata(args.metadata, args.meta)),
            "wait": not args.no_wait,
            "timeout": args.timeout,
            "also": [(name, None) for name in args.also or ()] + [(None, label) for label in args.also_labels or ()],
        }


def dispatch(prog: str, args: argparse.Namespace) -> int:
    _configure_logging(prog, quiet=bool(getattr(args, "quiet", False)))
    try:
        settings = resolve(os.environ, url=args.url, api_key=args.api_key, retry_for=args.retry_for)
        handler = _HANDLERS[args.command if args.command != "env" else f"env {args.env_command}"]
        return handler(Context(prog, args, settings))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (SIGINT)", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Terminated as exc:
        print(f"{prog}: terminated (signal {exc.signum})", file=sys.stderr)
        return 128 + exc.signum
    except CallMeError as exc:
        print(f"{prog}: {describe(exc)}", file=sys.stderr)
        return exit_code(exc)


def exit_code(error: CallMeError) -> ExitCode:
    if isinstance(error, APIError) and error.status in (502, 503, 504):
        return ExitCode.UNREACHABLE
    for kinds, code in _EXIT_CODES:
        if isinstance(error, kinds):
            return code
    return ExitCode.ERROR


_EXIT_CODES: tuple[tuple[type[CallMeError] | tuple[type[CallMeError], ...], ExitCode], ...] = (
    (NotGranted, ExitCode.NOT_GRANTED),
    (WaitTimeout, ExitCode.WAIT_TIMEOUT),
    (TransportError, ExitCode.UNREACHABLE),
    ((Unauthorized, Forbidden, WrongToken), ExitCode.NOT_ALLOWED),
    ((NotFound, Gone), ExitCode.GONE),
    ((ConfigError, UsageError, Invalid, TooLarge, NoRoute), ExitCode.USAGE),
    (LeaseLost, ExitCode.LEASE_LOST),
)


def wait_printer(stream: TextIO) -> Callable[[Waiting], None]:
    """Prints the waiting line when it changes, and the same line again at most once a minute (a sign of life in a
    CI log): a server restart makes the client ask again and again, with the same answer each time."""
    last: list[tuple[str, float]] = []

    def print_waiting(waiting: Waiting) -> None:
        line, now = waiting_line(waiting), time.monotonic()
        if not last or last[0][0] != line or now - last[0][1] >= WAITING_LINE_REPEAT:
            print(line, file=stream, flush=True)
            last[:] = [(line, now)]

    return print_waiting


def print_acquired(stream: TextIO, lease: Lease | Group, waited: float) -> None:
    for one in lease.leases if isinstance(lease, Group) else (lease,):
        print(f"acquired slot for environment: {one.environment}", file=stream)
    print(f"waited {go_duration(waited)}", file=stream, flush=True)


def request(ctx: Context) -> int:
    args = ctx.args
    human = sys.stdout if args.output == "text" else sys.stderr
    started = time.monotonic()
    with ctx.client() as client:
        lease = client.acquire(args.environment, on_wait=wait_printer(human), **ctx.acquire_options())
    waited = lease.waited(time.monotonic() - started)
    ctx.remember(lease)
    print_acquired(human, lease, waited)
    if args.output == "json":
        print(to_json({**json.loads(to_json(lease)), "waited": round(waited, 3)}))
    elif args.output == "env":
        variables = (
            group_variables(lease, with_token=True)
            if isinstance(lease, Group)
            else lease_variables(lease, with_token=True)
        )
        sys.stdout.write(env_lines(variables))
    return ExitCode.OK


def release(ctx: Context) -> int:
    args = ctx.args
    url = ctx.settings.url
    ended_before = False
    with ctx.client() as client:
        if args.lease:
            stored = ctx.state.find_id(url, args.lease)
            name = (
                args.environment or (stored.environment if stored else None) or _lease_environment(client, args.lease)
            )
            if args.force:
                client.force_release(args.lease)
            else:
                token = args.token or (stored.token if stored else None)
                if not token:
                    raise UsageError(f"releasing lease {args.lease} needs its token: pass --token")
                ended_before = _release_quietly(client, args.lease, token, name) == "ended"
            ctx.state.remove(url, args.lease)
        elif args.environment:
            name = args.environment
            stored = ctx.state.find(url, name)
            outcome = _release_quietly(client, stored.id, stored.token, name, missing_ok=True) if stored else "missing"
            ended_before = outcome == "ended"
            released = outcome != "missing"
            if stored is not None:
                ctx.state.remove(url, stored.id)
            if not released and not _release_by_name(client, name, force=args.force, kept_in=ctx.state.path):
                return ExitCode.GONE
        else:
            raise UsageError("release what? give ENV, or --lease ID --token TOKEN")
    target = f"environment: {name}" if name else f"lease: {args.lease}"
    if ended_before:  # the warning on stderr says how; the slot is free either way, and a cleanup step succeeds
        print(f"slot was already free for {target} (the lease had ended before this release)")
    else:
        print(f"slot has been freed for {target}")
    return ExitCode.OK


def _release_by_name(client: Client, name: str, *, force: bool, kept_in: Path) -> bool:
    """Nothing kept here for `name`: free what this pipeline took there in another job (or, with `--force`, the
    oldest lease whoever took it; the server allows that to an admin key only). False, said on stderr, when
    there is nothing of ours to free. Never the original's blind DELETE /maybe: with a key that many runners
    share it would free another pipeline's lease while it deploys."""
    leases = sorted(client.environment(name).leases, key=lambda lease: lease.fence)
    mine = pipeline.identity(os.environ)
    if force:
        chosen = leases[:1]
    else:
        chosen = [lease for lease in leases if mine is not None and lease.metadata.get(pipeline.METADATA_KEY) == mine]
    if not chosen:
        if force:
            print(f"call-me: nothing to release: environment {name} has no live lease", file=sys.stderr)
        elif mine is None:
            print(
                f"call-me: nothing to release: no lease on {name} was taken from here (none is kept in {kept_in}); "
                f"name it with --lease ID --token TOKEN, or free the oldest with --force (admin key)",
                file=sys.stderr,
            )
        else:
            print(f"call-me: nothing to release: pipeline {mine} holds no lease on {name}", file=sys.stderr)
        return False
    lease = chosen[0]
    try:
        client.force_release(lease.id)  # its token stayed with the job that took it: this needs an admin key
    except Forbidden as exc:
        raise Forbidden(
            exc.status,
            (
                f"lease {lease.id} on {name} is held by {lease.holder}: --force frees another's lease with an admin "
                "key only"
            )
            if force
            else (
                f"lease {lease.id} on {name} was taken by this pipeline in another job, and this key may not release "
                f"it without its token: release it in the job that took it, or pass --lease {lease.id} --token TOKEN"
            ),
            context={"environment": name},
        ) from None
    return True


def _release_quietly(
    client: Client, lease_id: str, token: str, name: str | None, *, missing_ok: bool = False
) -> Literal["released", "ended", "missing"]:
    """Release; a lease that already ended is a warning, not a failure ("ended"). "missing": the server does not
    know it (with `missing_ok`; else NotFound is raised)."""

    def ended(_: LeaseGone) -> None:
        logger.warning(
            "lease %s on %s had already ended (expired or revoked): the slot was free before this release",
            lease_id,
            name or "its environment",
        )

    try:
        released = release_or_report(client, lease_id, token=token, on_ended=ended)
    except NotFound:
        if not missing_ok:
            raise
        return "missing"
    return "released" if released else "ended"


def _lease_environment(client: Client, lease_id: str) -> str | None:
    try:
        return client.get_lease(lease_id).environment
    except NotFound:
        raise
    except CallMeError:
        return None  # Only for the message; the release itself says what is wrong.


def renew(ctx: Context) -> int:
    args = ctx.args
    url = ctx.settings.url
    if args.lease:
        stored = ctx.state.find_id(url, args.lease)
        lease_id, token = args.lease, args.token or (stored.token if stored else None)
        if not token:
            raise UsageError(f"renewing lease {args.lease} needs its token: pass --token")
    elif args.environment:
        stored = ctx.state.find(url, args.environment)
        if stored is None:  # as `release ENV` with nothing of its own there: exit 7, one line
            print(
                f"{ctx.prog}: nothing to renew: no lease on {args.environment} was taken here (none is kept in "
                f"{ctx.state.path}); name it with --lease ID --token TOKEN",
                file=sys.stderr,
            )
            return ExitCode.GONE
        lease_id, token = stored.id, stored.token
    else:
        raise UsageError("renew what? give ENV, or --lease ID --token TOKEN")
    with ctx.client() as client:
        lease = client.renew(lease_id, token=token, ttl=args.ttl)
    print(f"renewed lease {lease.id} on environment: {lease.environment} until {clock_time(lease.expires_at)}")
    return ExitCode.OK


def status(ctx: Context) -> int:
    args = ctx.args
    with ctx.client() as client:
        if args.environment:
            env = client.environment(args.environment)
            sys.stdout.write(to_json(env) + "\n" if args.output == "json" else environment_detail(env))
        else:
            envs = client.environments()
            sys.stdout.write(to_json(envs) + "\n" if args.output == "json" else environments_table(envs))
    return ExitCode.OK


def history(ctx: Context) -> int:
    args = ctx.args
    with ctx.client() as client:
        events = client.history(args.environment, limit=args.limit)
    sys.stdout.write(to_json(events) + "\n" if args.output == "json" else history_table(events))
    return ExitCode.OK


def env_set(ctx: Context) -> int:
    args = ctx.args
    if args.no_labels and args.labels:
        raise UsageError("give --label or --no-labels, not both")
    labels = [] if args.no_labels else args.labels
    properties = _pairs(args.properties, "--property") if args.properties else None
    with ctx.client() as client:
        env = client.put_environment(
            args.name, slots=args.slots, labels=labels, description=args.description, properties=properties
        )
    print(environment_summary(env))
    return ExitCode.OK


def env_delete(ctx: Context) -> int:
    with ctx.client() as client:
        client.delete_environment(ctx.args.name, force=ctx.args.force)
    print(f"environment {ctx.args.name} deleted")
    return ExitCode.OK


def env_maintenance(ctx: Context) -> int:
    args = ctx.args
    on = args.switch == "on"
    with ctx.client() as client:
        client.environment(args.name)  # PUT would create it: say "no such environment" instead.
        note = args.note if args.note is not None else ("" if not on else None)
        env = client.put_environment(args.name, maintenance=on, note=note)
    print(environment_summary(env))
    return ExitCode.OK


def run(ctx: Context) -> int:
    from .runner import run_command

    return run_command(ctx)


_HANDLERS: dict[str, Callable[[Context], int]] = {
    "request": request,
    "release": release,
    "run": run,
    "renew": renew,
    "status": status,
    "history": history,
    "env set": env_set,
    "env delete": env_delete,
    "env maintenance": env_maintenance,
}


def _with_pipeline(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """The metadata, with this CI pipeline's identity (pipeline.py) unless the caller named one."""
    mine = pipeline.identity(os.environ)
    if mine is None or (metadata and pipeline.METADATA_KEY in metadata):
        return metadata
    return {**(metadata or {}), pipeline.METADATA_KEY: mine}


def _metadata(raw_json: str | None, pairs: list[str] | None) -> dict[str, Any] | None:
    metadata: dict[str, Any] = {}
    if raw_json:
        try:
            parsed = json.loads(raw_json)
        except ValueError as exc:
            raise UsageError(f"--metadata is not JSON ({exc})") from None
        if not isinstance(parsed, dict):
            raise UsageError('--metadata must be a JSON object, as in {"repo": "org/app"}')
        metadata.update(parsed)
    if pairs:
        metadata.update(_pairs(pairs, "--meta"))
    return metadata or None


def _pairs(items: list[str], flag: str) -> Mapping[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {item!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


def _configure_logging(prog: str, *, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
    root = logging.getLogger("callme")
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if quiet else logging.WARNING)
    root.propagate = False
