"""The GitHub Action, driven as a runner drives a Docker action, against a real server.

Each test runs the commands that action.yml names (`entrypoint`, then `post-entrypoint`) from
this virtual environment as subprocesses, with what the runner gives a step: every input as
INPUT_<NAME>, the GITHUB_* context, fresh output/state/summary files, and in the post step the
main step's state as STATE_<name>. tests/test_container.py does the same in the real image.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from .ghrunner import FakeJob, StepFiles, load_action, post_runs
from .httpproxy import Exchange, LossyProxy
from .serverproc import ADMIN_KEY, CLIENT_KEY, ServerProcess

ACTION = load_action()
BIN = Path(sys.executable).parent
STEP_TIMEOUT = 60.0


@dataclass
class Step:
    returncode: int
    stdout: str
    stderr: str
    files: StepFiles

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.startswith("::error")]

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.startswith("::warning")]


def _command(key: str) -> list[str]:
    """action.yml's entrypoint or post-entrypoint, as a command of this venv (the image has it on PATH)."""
    name, *args = shlex.split(ACTION["runs"][key])
    return [str(BIN / name), *args]


def _base_env() -> dict[str, str]:
    # Only what a container would have besides the runner's variables: no CALL_ME_* of the host.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def start_main(
    job: FakeJob, *, drop: tuple[str, ...] = (), extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], StepFiles]:
    env, files = job.step_env()
    for name in drop:
        env.pop(name)
    env.update(extra or {})
    proc = subprocess.Popen(
        _command("entrypoint"),
        env={**_base_env(), **env},
        cwd=job.workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, files


def finish(proc: subprocess.Popen[str], files: StepFiles, timeout: float = STEP_TIMEOUT) -> Step:
    stdout, stderr = proc.communicate(timeout=timeout)
    return Step(proc.returncode, stdout, stderr, files)


def run_main(job: FakeJob, **kwargs: Any) -> Step:
    return finish(*start_main(job, **kwargs))


def run_post(job: FakeJob, main: StepFiles, extra: dict[str, str] | None = None) -> Step:
    """The post step: a new step with the main step's saved state as STATE_*."""
    env, files = job.step_env(state=main.saved_state())
    proc = subprocess.run(
        _command("post-entrypoint"),
        env={**_base_env(), **env, **(extra or {})},
        cwd=job.workspace,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    return Step(proc.returncode, proc.stdout, proc.stderr, files)


@dataclass
class JobRun:
    main: Step
    later: list[int]  # the exit codes of the job's later steps that ran
    status: str  # the job's status when the post step's turn came
    post: Step | None  # None: the runner did not run the post step


def run_job(job: FakeJob, later_steps: list[str]) -> JobRun:
    """A job as the runner runs it: the action's main step, then the job's own steps (shell commands;
    once one failed the rest are skipped, as steps without `if:` are), then the post step if
    action.yml's post-if holds for the job's status."""
    main = run_main(job)
    status = "success" if main.returncode == 0 else "failure"
    later = []
    for command in later_steps:
        if status != "success":
            break
        env = {**_base_env(), **job.context_env()}
        step = subprocess.run(["sh", "-c", command], cwd=job.workspace, env=env, capture_output=True, check=False)
        later.append(step.returncode)
        if step.returncode != 0:
            status = "failure"
    post = run_post(job, main.files) if post_runs(ACTION, status) else None
    return JobRun(main, later, status, post)


def make_job(server: ServerProcess, root: Path, name: str = "job", **with_: str) -> FakeJob:
    inputs = {"url": server.url, "api-key": CLIENT_KEY, **with_}
    return FakeJob(root / name, {key.replace("_", "-"): value for key, value in inputs.items()}, job=name)


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(ADMIN_KEY) as client:
        yield client


def kinds(admin: httpx.Client, environment: str = "uat") -> list[str]:
    """The audit log's lease and queue event kinds, oldest first."""
    response = admin.get("/v1/history", params={"environment": environment, "limit": 100})
    assert response.status_code == 200, response.text
    events = reversed(response.json()["events"])
    return [event["kind"] for event in events if not event["kind"].startswith("environment_")]


def environment(admin: httpx.Client, name: str = "uat") -> dict[str, Any]:
    response = admin.get(f"/v1/environments/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def hold(server: ServerProcess, name: str = "uat", holder: str = "someone-else") -> dict[str, Any]:
    with server.client(CLIENT_KEY) as client:
        response = client.post("/v1/leases", json={"environment": name, "holder": holder, "ttl": 600})
    assert response.status_code == 201, response.text
    lease: dict[str, Any] = response.json()
    return lease


def release(server: ServerProcess, lease: dict[str, Any]) -> None:
    with server.client(CLIENT_KEY) as client:
        response = client.delete(f"/v1/leases/{lease['id']}", headers={"X-Lease-Token": lease["token"]})
    assert response.status_code == 204, response.text


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_action_yml_runs_the_package_console_scripts() -> None:
    runs = ACTION["runs"]
    assert runs["using"] == "docker"
    assert runs["image"] == "Dockerfile"
    assert runs["post-if"] == "always()"
    for key in ("entrypoint", "post-entrypoint"):
        assert Path(_command(key)[0]).exists(), f"{runs[key]} is not a console script of this package"
    assert set(ACTION["outputs"]) == {
        "environment",
        "lease-id",
        "fence",
        "waited",
        "expires-at",
        "properties",
        "leases",
    }
    assert ACTION["inputs"]["ttl"]["default"] == "21600"


def test_acquire_sets_outputs_and_the_post_step_releases(
    server: ServerProcess, admin: httpx.Client, tmp_path: Path
) -> None:
    properties = {"url": "https://uat.example.com", "motto": 'multi\nline "quoted" <b>|</b>'}
    assert admin.put("/v1/environments/uat", json={"properties": properties}).status_code in (200, 201)
    job = make_job(server, tmp_path, environment="uat", metadata='{"ticket": "OPS-1", "actor": "release-bot"}')

    main = run_main(job)
    assert main.returncode == 0, main.stdout + main.stderr
    assert main.errors == []
    outputs = main.files.outputs()
    assert outputs["environment"] == "uat"
    assert json.loads(outputs["properties"]) == properties
    assert int(outputs["fence"]) > 0
    assert 0 <= float(outputs["waited"]) < 10
    assert datetime.fromisoformat(outputs["expires-at"]).tzinfo is not None
    state = main.files.saved_state()
    assert state["lease_id"] == outputs["lease-id"]
    token = state["lease_token"]
    # The token is masked before anything could print it, and printed nowhere else.
    assert f"::add-mask::{token}" in main.stdout.splitlines()
    assert main.stdout.count(token) == 1
    assert token not in main.files.output.read_text() + main.stderr + main.files.summary_text()
    assert "acquired slot for environment: uat" in main.stdout

    lease = admin.get(f"/v1/leases/{outputs['lease-id']}").json()
    assert lease["holder"] == job.holder
    assert lease["ttl"] == 21600
    assert lease["metadata"] == {
        "run_url": f"https://github.com/org/app/actions/runs/{job.run_id}",
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "actor": "release-bot",  # the step's metadata wins over the run's
        "workflow": "deploy and test",
        "ticket": "OPS-1",
    }
    summary = main.files.summary_text()
    for text in ("holding uat", "holder", "environment", "waited", "fence", outputs["fence"]):
        assert text in summary
    assert job.run_id in summary

    post = run_post(job, main.files)
    assert post.returncode == 0, post.stdout + post.stderr
    assert post.warnings == []
    assert "slot has been freed for environment: uat" in post.stdout
    assert admin.get(f"/v1/leases/{outputs['lease-id']}").json()["state"] == "released"
    assert kinds(admin) == ["acquired", "released"]


def test_post_releases_after_a_later_step_failed(server: ServerProcess, admin: httpx.Client, tmp_path: Path) -> None:
    job = make_job(server, tmp_path, environment="uat")
    run = run_job(job, ["echo deploying to uat", "echo the tests failed; exit 1", "echo never runs"])
    assert run.main.returncode == 0, run.main.stdout + run.main.stderr
    assert run.status == "failure"
    assert run.later == [0, 1], "a step after a failed one ran"
    assert run.post is not None, (
        f"the runner skips the post step of a failed job (post-if: {ACTION['runs']['post-if']})"
    )
    assert run.post.returncode == 0, run.post.stdout + run.post.stderr
    assert "slot has been freed for environment: uat" in run.post.stdout
    assert kinds(admin) == ["acquired", "released"]
    assert environment(admin)["leases"] == []


def test_label_output_names_the_environment_held(server: ServerProcess, admin: httpx.Client, tmp_path: Path) -> None:
    body = {"labels": ["staging"], "properties": {"url": "https://staging-2.example.com"}}
    assert admin.put("/v1/environments/staging-2", json=body).status_code == 201
    job = make_job(server, tmp_path, label="staging")
    main = run_main(job)
    assert main.returncode == 0, main.stdout + main.stderr
    assert main.files.outputs()["environment"] == "staging-2"
    assert json.loads(main.files.outputs()["properties"]) == {"url": "https://staging-2.example.com"}
    assert run_post(job, main.files).returncode == 0
    assert kinds(admin, "staging-2")[-1] == "released"


def test_any_name_travels_inputs_outputs_state_and_summary(
    server: ServerProcess, admin: httpx.Client, tmp_path: Path
) -> None:
    # The original accepted any name: a slash, a quote, a `$`, Markdown and HTML are all just text here.
    name, label = "feature/it's $HOME | `x` <b>", "pool a, b"
    assert admin.put(f"/v1/environments/{quote(name, safe='')}", json={"labels": [label]}).status_code == 201
    for how, given in (("environment", name), ("label", label)):
        job = make_job(server, tmp_path, how, **{how: given})
        main = run_main(job)
        assert main.returncode == 0, main.stdout + main.stderr
        assert main.files.outputs()["environment"] == name
        assert main.files.saved_state()["environment"] == name
        assert f"acquired slot for environment: {name}" in main.stdout
        post = run_post(job, main.files)
        assert post.returncode == 0, post.stdout + post.stderr
        assert f"slot has been freed for environment: {name}" in post.stdout
        summaries = main.files.summary_text() + post.files.summary_text()
        assert "holding feature/it's $HOME" in summaries
        assert "Released feature/it's $HOME" in summaries
        # Shown as text: no code span, table cell or HTML tag of the name's own survives into the Markdown.
        assert "`x`" not in summaries
        assert "<b>" not in summaries
        assert "| `x`" not in summaries
    assert environment(admin, quote(name, safe=""))["leases"] == []
    assert kinds(admin, name) == ["acquired", "released"] * 2


def test_main_times_out_while_another_holds_and_post_leaves(
    server: ServerProcess, admin: httpx.Client, tmp_path: Path
) -> None:
    other = hold(server)
    job = make_job(server, tmp_path, environment="uat", timeout="1")
    started = time.monotonic()
    main = run_main(job)
    assert time.monotonic() - started < 15
    assert main.returncode == 4, main.stdout + main.stderr
    [error] = main.errors
    assert "still not granted after" in error
    assert "held by someone-else" in error
    assert '"timeout" input' in error
    assert "waiting for free slot on environment: uat (position 1 in queue" in main.stdout
    # The ticket was saved as soon as the server queued the request.
    state = main.files.saved_state()
    assert state["ticket"]
    assert "lease_id" not in state
    assert f"::add-mask::{state['ticket']}" in main.stdout

    post = run_post(job, main.files)
    assert post.returncode == 0, post.stdout + post.stderr
    assert post.warnings == []
    assert "left the queue" in post.stdout
    uat = environment(admin)
    assert uat["queue"] == []
    assert [lease["holder"] for lease in uat["leases"]] == ["someone-else"]
    assert "left" in kinds(admin)
    release(server, other)


def test_post_without_saved_state_is_a_no_op(server: ServerProcess, admin: httpx.Client, tmp_path: Path) -> None:
    # A job cancelled before the main step reached the server: the post step still runs.
    job = make_job(server, tmp_path, environment="uat")
    job.step_env()  # the main step's files, left empty
    post = run_post(job, job.steps[0])
    assert post.returncode == 0, post.stdout + post.stderr
    assert post.errors == []
    assert post.warnings == []
    assert "nothing to release" in post.stdout
    assert admin.get("/v1/history").json()["events"] == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_cancelled_while_waiting_post_leaves_the_queue(
    server: ServerProcess, admin: httpx.Client, tmp_path: Path, signum: signal.Signals
) -> None:
    other = hold(server)
    job = make_job(server, tmp_path, environment="uat")
    proc, files = start_main(job)
    with reaped(proc):
        wait_for(lambda: "ticket" in files.saved_state(), "the main step to save its ticket")
        assert len(environment(admin)["queue"]) == 1
        proc.send_signal(signum)
        main = finish(proc, files)
    assert main.returncode in (128 + signum, -signum), main.stdout + main.stderr

    post = run_post(job, files)
    assert post.returncode == 0, post.stdout + post.stderr
    assert post.warnings == []
    assert environment(admin)["queue"] == []
    # The slot passes on to nobody: the cancelled job's place is gone.
    release(server, other)
    assert environment(admin)["leases"] == []
    assert kinds(admin).count("acquired") == 1


def test_two_jobs_wait_and_are_served_in_order(server: ServerProcess, admin: httpx.Client, tmp_path: Path) -> None:
    first = make_job(server, tmp_path, "first", environment="uat")
    main_first = run_main(first)
    assert main_first.returncode == 0, main_first.stdout + main_first.stderr

    waiting = []
    for name in ("second", "third"):
        job = make_job(server, tmp_path, name, environment="uat")
        proc, files = start_main(job)
        waiting.append((job, proc, files))
        wait_for(lambda files=files: "ticket" in files.saved_state(), f"{name} to be queued")
    (second, proc_second, files_second), (third, proc_third, files_third) = waiting
    with reaped(proc_second), reaped(proc_third):
        assert run_post(first, main_first.files).returncode == 0
        main_second = finish(proc_second, files_second)
        assert main_second.returncode == 0, main_second.stdout + main_second.stderr
        assert "position 1 in queue" in main_second.stdout
        assert proc_third.poll() is None, "the third job got the slot while the second held it"
        assert run_post(second, files_second).returncode == 0
        main_third = finish(proc_third, files_third)
        assert main_third.returncode == 0, main_third.stdout + main_third.stderr
        assert "position 2 in queue" in main_third.stdout
    assert run_post(third, files_third).returncode == 0

    fences = [int(step.files.outputs()["fence"]) for step in (main_first, main_second, main_third)]
    assert fences == sorted(fences)
    assert len(set(fences)) == 3
    events = reversed(admin.get("/v1/history", params={"environment": "uat"}).json()["events"])
    acquired = [event["holder"] for event in events if event["kind"] == "acquired"]
    assert acquired == [first.holder, second.holder, third.holder]
    assert environment(admin)["leases"] == []


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ({}, '"environment", "label" and "environments"'),
        ({"environment": "uat", "label": "staging"}, '"environment" (uat) and "label" (staging)'),
        ({"environment": "uat", "ttl": "6h"}, 'input "ttl"'),
        ({"environment": "uat", "ttl": "0"}, 'input "ttl"'),
        ({"environment": "uat", "timeout": "-5"}, 'input "timeout"'),
        ({"environment": "uat", "priority": "high"}, 'input "priority"'),
        ({"environment": "uat", "metadata": "{not json"}, 'input "metadata" is not JSON'),
        ({"environment": "uat", "metadata": '["a"]'}, 'input "metadata" is not a JSON object'),
        ({"environment": "uat", "no-wait": "yes please"}, 'input "no-wait"'),
        ({"environment": "uat", "url": ""}, 'input "url"'),
        ({"environment": "uat", "api-key": ""}, 'input "api-key"'),
    ],
    ids=[
        "no-target",
        "both-targets",
        "ttl-text",
        "ttl-zero",
        "timeout",
        "priority",
        "metadata",
        "metadata-list",
        "no-wait",
        "url",
        "api-key",
    ],
)
def test_bad_inputs_end_main_with_an_error_naming_the_input(
    server: ServerProcess, admin: httpx.Client, tmp_path: Path, inputs: dict[str, str], named: str
) -> None:
    main = run_main(make_job(server, tmp_path, **inputs))
    assert main.returncode == 2, main.stdout + main.stderr
    [error] = main.errors
    assert error.startswith("::error title=call-me::")
    assert named in error
    assert "Traceback" not in main.stderr
    assert main.files.saved_state() == {}
    assert admin.get("/v1/history").json()["events"] == []


def test_errors_the_server_gives_say_which_input_to_fix(
    server: ServerProcess, admin: httpx.Client, tmp_path: Path
) -> None:
    wrong_key = run_main(make_job(server, tmp_path, "wrong-key", environment="uat", api_key="nope"))
    assert wrong_key.returncode == 6
    assert '"api-key" input' in wrong_key.errors[0]

    too_long = run_main(make_job(server, tmp_path, "too-long", environment="uat", ttl=str(10**7)))
    assert too_long.returncode == 2
    assert "ttl" in too_long.errors[0]

    other = hold(server)
    busy_job = make_job(server, tmp_path, "busy", environment="uat", no_wait="true")
    busy = run_main(busy_job)
    assert busy.returncode == 3
    assert '"no-wait"' in busy.errors[0]
    assert "held by someone-else" in busy.errors[0]
    assert set(busy.files.saved_state()) == {"url", "request"}  # saved before the POST, as always
    # Its post step repeats the request without queueing: still busy, so nothing to give back.
    post = run_post(busy_job, busy.files)
    assert post.returncode == 0, post.stdout + post.stderr
    assert post.warnings == []
    assert "nothing to release" in post.stdout
    assert "queued" not in kinds(admin)
    release(server, other)


def test_api_key_input_with_an_underscore_is_accepted(
    server: ServerProcess, admin: httpx.Client, tmp_path: Path
) -> None:
    job = make_job(server, tmp_path, environment="uat")
    main = run_main(job, drop=("INPUT_API-KEY",), extra={"INPUT_API_KEY": CLIENT_KEY})
    assert main.returncode == 0, main.stdout + main.stderr
    post = run_post(job, main.files)
    assert post.returncode == 0
    assert kinds(admin) == ["acquired", "released"]


def test_post_warns_but_succeeds_when_the_release_fails(
    server: ServerProcess, admin: httpx.Client, tmp_path: Path
) -> None:
    job = make_job(server, tmp_path, environment="uat")
    main = run_main(job)
    assert main.returncode == 0
    lease_id = main.files.outputs()["lease-id"]
    assert admin.delete(f"/v1/leases/{lease_id}", params={"force": "true"}).status_code == 204
    post = run_post(job, main.files)
    assert post.returncode == 0, post.stdout + post.stderr
    [warning] = post.warnings
    assert "had already ended" in warning

    server.kill()  # unreachable: a warning, never a failed job
    job_down = make_job(server, tmp_path, "down", environment="uat")
    job_down.step_env()
    job_down.steps[0].state.write_text("url=http://127.0.0.1:9\nlease_id=x\nlease_token=y\nenvironment=uat\n")
    post_down = run_post(job_down, job_down.steps[0], extra={"CALL_ME_RETRY_FOR": "1"})
    assert post_down.returncode == 0
    assert "could not release lease x on uat" in post_down.warnings[0]


@pytest.mark.parametrize("busy", [False, True], ids=["granted", "queued"])
def test_main_without_a_state_file_gives_back_what_it_got(
    server: ServerProcess, admin: httpx.Client, tmp_path: Path, busy: bool
) -> None:
    # Without GITHUB_STATE the post step could not release: the main step must not keep anything.
    other = hold(server) if busy else None
    main = run_main(make_job(server, tmp_path, environment="uat"), drop=("GITHUB_STATE",))
    assert main.returncode == 1, main.stdout + main.stderr
    [error] = main.errors
    assert "GITHUB_STATE is not set" in error
    assert "nothing is held or queued" in error
    # The request could not be saved for the post step, so it was never sent.
    assert kinds(admin) == (["acquired"] if busy else [])
    if other is not None:
        release(server, other)


@pytest.mark.parametrize("busy", [False, True], ids=["granted-at-once", "queued"])
def test_main_killed_before_its_first_answer_post_gives_back_what_it_got(
    server: ServerProcess, admin: httpx.Client, tmp_path: Path, busy: bool
) -> None:
    """SIGKILL while the server's answer to the first POST is on its way: the post step has only the
    saved request, repeats it (queue: false) and releases the lease or leaves the place it finds."""
    other = hold(server) if busy else None
    answered, let_go = threading.Event(), threading.Event()

    def hold_the_first_answer(exchange: Exchange) -> bool:
        # The server has answered; the main step has not heard. Held until it is killed, then lost.
        if exchange.method == "POST" and exchange.path == "/v1/leases" and not answered.is_set():
            answered.set()
            let_go.wait(STEP_TIMEOUT)
            return True
        return False

    with LossyProxy(server.port, drop=hold_the_first_answer) as proxy:
        try:
            # Every field a repeat must match (API.md: else 422), the run's metadata included.
            job = make_job(server, tmp_path, environment="uat", url=proxy.url, ttl="900", priority="2",
                           metadata='{"ticket": "OPS-2"}')  # fmt: skip
            proc, files = start_main(job)
            with reaped(proc):
                assert answered.wait(STEP_TIMEOUT), "the main step's POST never reached the server"
                proc.kill()
                main = finish(proc, files)
        finally:
            let_go.set()
        assert main.returncode == -signal.SIGKILL
        [first] = proxy.posts()
        assert first.status == (202 if busy else 201)
        assert kinds(admin) == (["acquired", "queued"] if busy else ["acquired"])
        state = files.saved_state()
        assert not {"lease_id", "ticket"} & set(state), state
        assert json.loads(state["request"])["request_id"] == first.request_json()["request_id"]

        post = run_post(job, files)

    assert post.returncode == 0, post.stdout + post.stderr
    assert post.warnings == []
    uat = environment(admin)
    assert uat["queue"] == []
    assert [lease["holder"] for lease in uat["leases"]] == (["someone-else"] if busy else [])
    if busy:
        assert "left the queue" in post.stdout
        assert kinds(admin) == ["acquired", "queued", "left"]
        assert other is not None
        release(server, other)
        assert environment(admin)["leases"] == []  # the place was gone: nobody was granted the slot
    else:
        made = first.response_json()["id"]
        assert f"released lease {made}" in post.stdout
        assert "slot has been freed for environment: uat" in post.stdout
        # The lease the server made for the lost answer, released (not left to expire), and no other.
        assert admin.get(f"/v1/leases/{made}").json()["state"] == "released"
        assert kinds(admin) == ["acquired", "released"]
