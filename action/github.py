"""The GitHub Action's entry points (action.yml): `call-me-action-main` and `call-me-action-post`.

The main step waits for a slot and holds it; the post step (`post-if: always()`) releases it,
whatever the steps between did. A Docker action cannot run anything between its main and post
steps, so nothing renews the lease: it is asked for `ttl` seconds (6 h by default, the longest
a GitHub-hosted job runs), which only matters if the post step never runs (a runner that died).

The main step saves to the state, for the post step, its request (with its `request_id`) before
the request goes out, its ticket as soon as the server queues it, and the lease once granted. A
job cancelled meanwhile kills the main step (SIGKILL, at any moment), but its post step still
runs. With a lease saved it releases it. Else it leaves the queue with the saved ticket (which
also releases a lease granted meanwhile), then sends the saved request again as a repeat that
cannot queue (`Client.withdraw`): that finds what the request made when the main step was
killed before the answer reached it, and releases the lease or leaves the place. Nothing stays
held, and a request the server never saw takes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from typing import Any, NoReturn

from . import interrupt
from .client import Client
from .commands import exit_code
from .config import Settings, resolve
from .constants import REQUEST_DEFAULT_TTL, ExitCode
from .errors import (
    CallMeError,
    ConfigError,
    Forbidden,
    Invalid,
    LeaseGone,
    NotFound,
    NotGranted,
    TooLarge,
    TransportError,
    Unauthorized,
    WaitTimeout,
)
from .format import clock_time, go_duration, rfc3339
from .interrupt import Terminated
from .models import JSON, Group, Lease, Waiting
from .releasing import release_or_report
from .views import describe, waiting_line
from .workflow import FileCommandError, Workflow

__all__ = ["ActionInputs", "BadInput", "acquire_step", "main", "post", "read_inputs", "release_step"]

# The names of what the main step saves for the post step (STATE_<name> there).
STATE_URL = "url"
STATE_REQUEST = "request"  # the acquire's body as JSON, request_id included (no key: that is an input)
STATE_TICKET = "ticket"
STATE_LEASE_ID = "lease_id"
STATE_LEASE_TOKEN = "lease_token"  # noqa: S105 - a state name, not a secret
STATE_ENVIRONMENT = "environment"
STATE_GROUP = "group"  # "true" when lease_id and lease_token are a group's id and token (input environments)

_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE", ""})


class BadInput(CallMeError):
    """An input of the step cannot be used as given; the message names it and says what to give."""


@dataclasses.dataclass(frozen=True)
class ActionInputs:
    settings: Settings
    environment: str | None
    label: str | None
    holder: str | None
    ttl: int
    timeout: float | None
    priority: int | None
    metadata: dict[str, Any]
    wait: bool
    also: tuple[str, ...] = ()  # the environments after the first of input "environments": one grant of all


def read_inputs(workflow: Workflow) -> ActionInputs:
    """The step's inputs, checked; BadInput names the first one that cannot be used."""
    url = workflow.input("url")
    if not url:
        raise BadInput('input "url" is empty: give the call-me server\'s URL, such as ${{ secrets.CALL_ME_URL }}')
    api_key = workflow.input("api-key")
    if not api_key:
        raise BadInput(
            'input "api-key" is empty: give a key with the client role, such as ${{ secrets.CALL_ME_API_KEY }}'
        )
    environment = workflow.input("environment") or None
    label = workflow.input("label") or None
    listed = _environments(workflow)
    if listed and (environment is not None or label is not None):
        raise BadInput('input "environments" is set with "environment" or "label": give the list alone')
    if listed:
        environment = listed[0]
    if environment is None and label is None:
        raise BadInput(
            'none of the inputs "environment", "label" and "environments" is set: give the environment to hold, '
            "a label, or a list of environments"
        )
    if environment is not None and label is not None:
        raise BadInput(f'inputs "environment" ({environment}) and "label" ({label}) are both set: give only one')
    return ActionInputs(
        settings=_settings(workflow, url, api_key),
        environment=environment,
        label=label,
        holder=workflow.input("holder") or _default_holder(workflow),
        ttl=_whole_number(workflow, "ttl", default=REQUEST_DEFAULT_TTL, least=1),
        timeout=_seconds(workflow, "timeout"),
        priority=_optional_int(workflow, "priority"),
        metadata={**_run_metadata(workflow), **_metadata(workflow)},
        wait=not _boolean(workflow, "no-wait"),
        also=tuple(listed[1:]),
    )


def _environments(workflow: Workflow) -> list[str]:
    """Input "environments": names separated by commas or new lines (YAML's `uat, payments-sandbox`, or a block
    with one name a line), spaces around each dropped; 2 to 8 of them, each once."""
    raw = workflow.input("environments")
    names = [name.strip() for line in raw.splitlines() for name in line.split(",") if name.strip()]
    if not names:
        return []
    if len(names) > 8:
        raise BadInput(f'input "environments" names {len(names)} environments: give at most 8')
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise BadInput(f'input "environments" names {twice} twice: name each environment once')
    return names


def acquire_step(workflow: Workflow) -> int:
    """The main step: wait for a slot, save it for the post step, set the outputs and the summary."""
    try:
        inputs = read_inputs(workflow)
    except BadInput as exc:
        workflow.error(str(exc))
        return ExitCode.USAGE
    workflow.mask(inputs.settings.api_key)
    target = f"environment {inputs.environment}" if inputs.environment else f"any environment labelled {inputs.label}"
    if inputs.also:
        target = "environments " + ", ".join([inputs.environment or "", *inputs.also]) + " at once"
    workflow.print(f"call-me: requesting {target} at {inputs.settings.url} for {inputs.holder or 'this key'}")
    started = time.monotonic()
    saved_ticket = ""

    def on_request(request: JSON) -> None:
        workflow.mask(str(request["request_id"]))  # with the key, it finds the lease's token
        workflow.save_state({STATE_URL: inputs.settings.url, STATE_REQUEST: json.dumps(request, sort_keys=True)})

    def on_wait(waiting: Waiting) -> None:
        nonlocal saved_ticket
        if waiting.ticket != saved_ticket:
            workflow.mask(waiting.ticket)
            workflow.save_state({STATE_URL: inputs.settings.url, STATE_TICKET: waiting.ticket})
            saved_ticket = waiting.ticket
        workflow.print(f"{waiting_line(waiting)}; waited {go_duration(time.monotonic() - started)}")

    interrupt.install()
    try:
        with inputs.settings.client() as client:
            lease = client.acquire(
                inputs.environment,
                label=inputs.label,
                ttl=inputs.ttl,
                holder=inputs.holder,
                priority=inputs.priority,
                metadata=inputs.metadata,
                wait=inputs.wait,
                also=[(name, None) for name in inputs.also],
                timeout=inputs.timeout,
                on_wait=on_wait,
                on_request=on_request,
            )
    except CallMeError as exc:
        workflow.error(describe(exc, hint=_hint))
        return exit_code(exc)
    except FileCommandError as exc:
        workflow.error(
            f"could not save the request for the post step ({exc}); nothing is held or queued, "
            "since the post step could not give it back"
        )
        return ExitCode.ERROR
    except OSError as exc:
        workflow.error(f"could not write a file of the runner ({exc}); nothing is held or queued")
        return ExitCode.ERROR
    except KeyboardInterrupt:
        workflow.print("call-me: interrupted while waiting; left the queue")
        return ExitCode.INTERRUPTED
    except Terminated as exc:
        workflow.print("call-me: cancelled while waiting; left the queue")
        return 128 + exc.signum
    waited = lease.waited(time.monotonic() - started)
    return _granted(workflow, inputs, lease, waited)


def _granted(workflow: Workflow, inputs: ActionInputs, lease: Lease | Group, waited: float) -> int:
    token = lease.token or ""
    try:
        workflow.mask(token)
        if isinstance(lease, Group):
            for one in lease.leases:
                workflow.mask(one.token or "")
        workflow.save_state(
            {
                STATE_URL: inputs.settings.url,
                STATE_LEASE_ID: lease.id,
                STATE_LEASE_TOKEN: token,
                # A group's names one a line (a name holds no control character, so no new line).
                STATE_ENVIRONMENT: (
                    "\n".join(one.environment for one in lease.leases)
                    if isinstance(lease, Group)
                    else lease.environment
                ),
                STATE_GROUP: "true" if isinstance(lease, Group) else "",
            }
        )
    except (FileCommandError, OSError) as exc:
        # Without the state the post step cannot release: give the slot back now, fail the step.
        workflow.error(f"could not save the lease for the post step ({exc}); releasing it again")
        _release_now(workflow, inputs, lease)
        return ExitCode.ERROR
    except (KeyboardInterrupt, Terminated) as exc:
        # Cancelled between the grant and saving it: the post step would not know the lease.
        workflow.print("call-me: cancelled as the slot was granted; releasing it")
        _release_now(workflow, inputs, lease)
        return 128 + exc.signum if isinstance(exc, Terminated) else ExitCode.INTERRUPTED
    if isinstance(lease, Group):
        return _granted_group(workflow, lease, waited)
    workflow.set_outputs(
        {
            "environment": lease.environment,
            "lease-id": lease.id,
            "fence": str(lease.fence),
            "waited": f"{waited:.3f}",
            "expires-at": rfc3339(lease.expires_at),
            "properties": json.dumps(dict(lease.properties), sort_keys=True, ensure_ascii=False),
        }
    )
    workflow.print(f"acquired slot for environment: {lease.environment}")
    workflow.print(
        f"waited {go_duration(waited)}; fence {lease.fence}; lease {lease.id} until {clock_time(lease.expires_at)}"
    )
    with contextlib.suppress(OSError):  # The summary is a courtesy: the lease and outputs are what count.
        workflow.add_summary(_summary(lease, waited))
    return ExitCode.OK


def _granted_group(workflow: Workflow, group: Group, waited: float) -> int:
    """The outputs of a group: `environment` lists the names, `lease-id` is the group's id, `fence` the fences and
    `properties` one object per environment; `leases` has each lease in full."""
    leases = [
        {
            "environment": lease.environment,
            "id": lease.id,
            "fence": lease.fence,
            "expires_at": rfc3339(lease.expires_at),
            "properties": dict(lease.properties),
        }
        for lease in group.leases
    ]
    workflow.set_outputs(
        {
            "environment": group.environment,
            "lease-id": group.id,
            "fence": ",".join(str(lease.fence) for lease in group.leases),
            "waited": f"{waited:.3f}",
            "expires-at": rfc3339(group.expires_at),
            "properties": json.dumps(
                {lease.environment: dict(lease.properties) for lease in group.leases},
                sort_keys=True,
                ensure_ascii=False,
            ),
            "leases": json.dumps(leases, sort_keys=True, ensure_ascii=False),
        }
    )
    for lease in group.leases:
        workflow.print(f"acquired slot for environment: {lease.environment}")
    workflow.print(f"waited {go_duration(waited)}; group {group.id} until {clock_time(group.expires_at)}")
    with contextlib.suppress(OSError):
        workflow.add_summary("".join(_summary(lease, waited) for lease in group.leases))
    return ExitCode.OK


def _release_now(workflow: Workflow, inputs: ActionInputs, lease: Lease | Group) -> None:
    def failed(exc: CallMeError) -> None:
        workflow.warning(f"could not release lease {lease.id} on {lease.environment} ({exc}); it expires by its ttl")

    with inputs.settings.client() as client:
        release_or_report(client, lease, on_ended=failed, on_error=failed)


def release_step(workflow: Workflow) -> int:
    """The post step: release the saved lease, leave the saved place, or give back what the saved
    request made; never fails the job."""
    lease_id, token = workflow.state(STATE_LEASE_ID), workflow.state(STATE_LEASE_TOKEN)
    ticket, request = workflow.state(STATE_TICKET), workflow.state(STATE_REQUEST)
    if not (lease_id and token) and not ticket and not request:
        workflow.print("call-me: nothing to release (the main step asked the server for nothing)")
        return ExitCode.OK
    workflow.mask(token)
    workflow.mask(ticket)
    url = workflow.state(STATE_URL) or workflow.input("url")
    api_key = workflow.input("api-key")
    environment = workflow.state(STATE_ENVIRONMENT) or "its environment"
    if not url or not api_key:
        workflow.warning(
            'could not release: the post step got no "url" or "api-key" input; the lease expires by its ttl'
        )
        return ExitCode.OK
    workflow.mask(api_key)
    # What a failure would have stopped, and what becomes of it then.
    doing = (f"release lease {lease_id} on {environment}", "the lease expires by its ttl")
    if not (lease_id and token):
        doing = _LEAVING if ticket else _WITHDRAWING
    try:
        settings = resolve(workflow.environ, url=url, api_key=api_key)
        with settings.client() as client:
            if lease_id and token:
                if workflow.state(STATE_GROUP) == "true":
                    group = Group(id=lease_id, leases=(), token=token)
                    _release(workflow, client, group, token, environment)
                else:
                    _release(workflow, client, lease_id, token, environment)
                return ExitCode.OK
            if ticket:
                client.leave(ticket)
                workflow.print("call-me: left the queue (the main step did not get the slot)")
            if request:
                # The saved ticket is usually this request's, left just now (then this finds
                # nothing); but it may be a lost place's, the request a fresh one not yet answered.
                doing = _WITHDRAWING
                _withdraw(workflow, client, request, quiet=bool(ticket))
    except CallMeError as exc:
        what, ends = doing
        workflow.warning(f"could not {what}: {exc}; {ends}")
    return ExitCode.OK


_LEAVING = ("leave the queue", "the server drops the place within its grace time")
_WITHDRAWING = (
    "give back what the main step's request got",
    "the server drops a place within its grace time, and a lease expires by its ttl",
)


def _release(workflow: Workflow, client: Client, lease: str | Group, token: str, environment: str) -> None:
    lease_id = lease.id if isinstance(lease, Group) else lease

    def ended(_: LeaseGone) -> None:
        workflow.warning(
            f"lease {lease_id} on {environment} had already ended (expired or revoked) before the post step: "
            "the environment may have been used by someone else meanwhile; give a longer ttl"
        )

    if not release_or_report(client, lease, token=token, on_ended=ended):
        return
    for name in environment.splitlines() if isinstance(lease, Group) else [environment]:
        workflow.print(f"slot has been freed for environment: {name}")
    with contextlib.suppress(OSError):  # The summary is a courtesy: never fail the post step over it.
        workflow.add_summary(f"Released {_cell(environment)} (lease `{lease_id}`).\n")


def _withdraw(workflow: Workflow, client: Client, saved: str, *, quiet: bool) -> None:
    """What the main step's last request made, given back; `quiet`: say nothing if that was nothing."""
    try:
        request = json.loads(saved)
    except ValueError:
        request = None
    if not isinstance(request, dict) or "request_id" not in request:
        workflow.warning("the main step's saved request cannot be read; what it got ends by itself (ttl, grace)")
        return
    workflow.mask(str(request["request_id"]))
    outcome = client.withdraw(request)
    if isinstance(outcome, Group):
        workflow.print(f"call-me: the main step stopped before the leases reached it; released group {outcome.id}")
        for lease in outcome.leases:
            workflow.print(f"slot has been freed for environment: {lease.environment}")
    elif isinstance(outcome, Lease):
        workflow.print(f"call-me: the main step stopped before the lease reached it; released lease {outcome.id}")
        workflow.print(f"slot has been freed for environment: {outcome.environment}")
        with contextlib.suppress(OSError):
            workflow.add_summary(f"Released {_cell(outcome.environment)} (lease `{outcome.id}`).\n")
    elif isinstance(outcome, Waiting):
        workflow.print("call-me: left the queue (the main step stopped before the server's answer reached it)")
    elif not quiet:
        workflow.print("call-me: nothing to release (the main step's request holds no lease and no place)")


def main() -> NoReturn:
    """`call-me-action-main`: action.yml's entrypoint."""
    sys.exit(acquire_step(Workflow(os.environ)))


def post() -> NoReturn:
    """`call-me-action-post`: action.yml's post-entrypoint."""
    sys.exit(release_step(Workflow(os.environ)))


# Inputs.


def _settings(workflow: Workflow, url: str, api_key: str) -> Settings:
    # CALL_ME_RETRY_FOR (the step's `env:`) bounds how long an unreachable server is retried.
    try:
        return resolve(workflow.environ, url=url, api_key=api_key)
    except ConfigError as exc:
        raise BadInput(f"{exc.message}: give it as a number of seconds in the step's env, or leave it out") from None


def _whole_number(workflow: Workflow, name: str, *, default: int, least: int) -> int:
    raw = workflow.input(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadInput(f'input "{name}" is {raw!r}: give a whole number of seconds, such as {default}') from None
    if value < least:
        raise BadInput(f'input "{name}" is {raw!r}: give {least} or more (default {default})')
    return value


def _seconds(workflow: Workflow, name: str) -> float | None:
    raw = workflow.input(name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise BadInput(f'input "{name}" is {raw!r}: give a number of seconds, 0 or more, or leave it empty')
    return value


def _optional_int(workflow: Workflow, name: str) -> int | None:
    raw = workflow.input(name)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadInput(f'input "{name}" is {raw!r}: give a whole number (higher is served first; default 0)') from None


def _boolean(workflow: Workflow, name: str) -> bool:
    raw = workflow.input(name)
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise BadInput(f'input "{name}" is {raw!r}: give true or false')


def _metadata(workflow: Workflow) -> dict[str, Any]:
    raw = workflow.input("metadata")
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise BadInput(
            f'input "metadata" is not JSON ({exc}): give one JSON object, such as {{"ticket": "OPS-1"}}'
        ) from None
    if not isinstance(parsed, dict):
        raise BadInput('input "metadata" is not a JSON object: give one, such as {"ticket": "OPS-1"}')
    return parsed


def _default_holder(workflow: Workflow) -> str | None:
    repository, run_id, job = workflow.context("repository"), workflow.context("run_id"), workflow.context("job")
    if not repository:
        return None  # Not on a runner: the server names the key's owner.
    holder = repository
    if run_id:
        holder += f"#{run_id}"
    if job:
        holder += f"/{job}"
    return holder


def _run_metadata(workflow: Workflow) -> dict[str, Any]:
    server, repository, run_id = (
        workflow.context("server_url"),
        workflow.context("repository"),
        workflow.context("run_id"),
    )
    metadata: dict[str, Any] = {}
    if server and repository and run_id:
        metadata["run_url"] = f"{server.rstrip('/')}/{repository}/actions/runs/{run_id}"
    for key, variable in (("commit", "sha"), ("actor", "actor"), ("workflow", "workflow")):
        if value := workflow.context(variable):
            metadata[key] = value
    return metadata


# Messages.

_HINTS: tuple[tuple[type[CallMeError], str], ...] = (
    (WaitTimeout, 'give the "timeout" input more seconds, or leave it empty to wait as long as the job may run'),
    (NotGranted, 'leave out "no-wait" to wait in the queue, or pick another environment'),
    (Unauthorized, 'check the "api-key" input (the secret it comes from may be empty or out of date)'),
    (Forbidden, 'give "api-key" a key with the client role (priority above the key\'s limit needs another key)'),
    (NotFound, 'check the "environment" or "label" input against the server\'s environments'),
    (TooLarge, 'send less "metadata"'),
    (Invalid, 'fix the input the message names ("ttl", "priority", "holder", "metadata", "environment", "label")'),
    (TransportError, 'check the "url" input and that the runner can reach the server'),
)


def _hint(error: CallMeError) -> str:
    """What to change in the step: the input to fix, where the error's own hint names CLI flags."""
    return next((hint for kind, hint in _HINTS if isinstance(error, kind)), error.hint)


def _summary(lease: Lease, waited: float) -> str:
    rows = [
        ("holder", lease.holder or "-"),
        ("environment", lease.environment),
        ("waited", go_duration(waited)),
        ("fence", str(lease.fence)),
        ("lease", lease.id),
        ("until", f"{clock_time(lease.expires_at)} unless released (the post step releases it)"),
    ]
    rows.extend((f"property {name}", value) for name, value in sorted(lease.properties.items()))
    lines = [f"### call-me: holding {_cell(lease.environment)}", "", "| | |", "|---|---|"]
    lines.extend(f"| {_cell(key)} | {_cell(value)} |" for key, value in rows)
    return "\n".join(lines) + "\n\n"


def _cell(text: str) -> str:
    """Plain text in a Markdown table cell: no markup, no HTML, no line breaks."""
    escaped = "".join("\\" + char if char in "\\`*_[]|~>" else char for char in text)
    return escaped.replace("<", "&lt;").replace("\r", " ").replace("\n", " ")
