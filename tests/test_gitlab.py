"""The GitLab template and component, run as GitLab users run them: real pipelines under
gitlab-ci-local (shell executor) against a real call-me server on 127.0.0.1.

Each pipeline runs in its own temporary git repository (gitlab-ci-local needs one) into which
the include file or the component is copied. scripts/gitlab-setup installs gitlab-ci-local
4.73.0 and rsync the first time (a session fixture calls it); where that cannot work these
tests skip and say why, or fail under CI=true.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from .httpproxy import Exchange, LossyProxy, Request, gateway_error
from .serverproc import ADMIN_KEY, CLIENT_KEY, ServerProcess, free_port
from .tooling import import_tool, run_setup, tool_missing

ROOT = Path(__file__).resolve().parent.parent
GCL = ROOT / ".tools" / "npm" / "node_modules" / ".bin" / "gitlab-ci-local"
VENV_BIN = Path(sys.executable).parent  # where pip put the `call-me` console script
PIPELINE_TIMEOUT = 60.0  # seconds one gitlab-ci-local run may take
# A script line (YAML-quoted) that prints what the job's script sees; the token must not be among it.
SHOW = (
    """'echo "seen: env=$CALL_ME_ENVIRONMENT fence=$CALL_ME_FENCE url=$CALL_ME_PROPERTY_URL"""
    """ token=${CALL_ME_LEASE_TOKEN:-none}"'"""
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def gitlab_ci_local() -> Path:
    run_setup(ROOT / "scripts" / "gitlab-setup", "gitlab-ci-local")
    return GCL


@dataclass
class Pipeline:
    repo: Path
    returncode: int
    output: str


class Project:
    """A temporary git checkout with a .gitlab-ci.yml, run with gitlab-ci-local."""

    def __init__(self, gcl: Path, root: Path, name: str, server_url: str, *, component: bool = False) -> None:
        self.gcl = gcl
        self.repo = root / name
        self.repo.mkdir(parents=True)
        self.server_url = server_url
        self.home = root / f"{name}-home"
        self.home.mkdir()
        self.procs: list[subprocess.Popen[str]] = []
        self._git("init", "-q", "-b", "main")
        self._git("config", "user.name", "t")
        self._git("config", "user.email", "t@example.com")
        self._git("remote", "add", "origin", f"git@gitlab.example.com:org/{name}.git")
        if component:
            (self.repo / "templates").mkdir()
            shutil.copy(ROOT / "templates" / "call-me.yml", self.repo / "templates" / "call-me.yml")
        else:
            (self.repo / "ci").mkdir()
            shutil.copy(ROOT / "gitlab-template" / "call-me.gitlab-ci.yml", self.repo / "ci" / "call-me.gitlab-ci.yml")
        self._git("add", "-A")
        self._git("commit", "-q", "-m", "call-me")
        # gitlab-ci-local reads a component of this project when its ref is HEAD's commit.
        self.component_ref = f"gitlab.example.com/org/{name}/call-me@{self._git('rev-parse', 'HEAD').strip()}"

    def _git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=self.repo, check=True, capture_output=True, text=True, timeout=15
        ).stdout

    def write(self, ci_yaml: str) -> None:
        (self.repo / ".gitlab-ci.yml").write_text(ci_yaml)

    def start(self, *, variables: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Runs the pipeline; `variables` are CI/CD variables (a PATH among them is the jobs' PATH)."""
        # The CLI path needs `call-me` on the jobs' PATH; gitlab-ci-local itself needs node and git.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CALL_ME_", "CI_", "GITLAB_"))}
        env.update({"HOME": str(self.home), "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
        settings = {"CALL_ME_URL": self.server_url, "CALL_ME_API_KEY": CLIENT_KEY, **(variables or {})}
        args = [str(self.gcl), "--shell-executor-no-image", "--no-color"]
        for key, value in settings.items():
            args += ["--variable", f"{key}={value}"]
        proc = subprocess.Popen(
            args, cwd=self.repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[str]) -> Pipeline:
        try:
            output, _ = proc.communicate(timeout=PIPELINE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate(timeout=10)
            raise AssertionError(f"pipeline in {self.repo} ran over {PIPELINE_TIMEOUT}s:\n{output}") from None
        return Pipeline(self.repo, proc.returncode, output)

    def run(self, *, variables: dict[str, str] | None = None) -> Pipeline:
        return self.finish(self.start(variables=variables))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


MakeProject = Callable[..., Project]


@pytest.fixture
def project(gitlab_ci_local: Path, tmp_path: Path, server: ServerProcess) -> Iterator[MakeProject]:
    """Makes checkouts that run against `server` (or `url`); kills their pipelines at the end."""
    made: list[Project] = []

    def make(name: str = "app", *, component: bool = False, url: str | None = None) -> Project:
        made.append(Project(gitlab_ci_local, tmp_path / "repos", name, url or server.url, component=component))
        return made[-1]

    try:
        yield make
    finally:
        for checkout in made:
            checkout.close()


def include_local(jobs: str) -> str:
    return f"include:\n  - local: ci/call-me.gitlab-ci.yml\n\n{jobs}"


def put_environment(server: ServerProcess, name: str, **body: object) -> None:
    with server.client() as http:
        assert http.put(f"/v1/environments/{name}", json=body).status_code in (200, 201)


def history(server: ServerProcess) -> list[dict[str, object]]:
    with server.client(ADMIN_KEY) as http:
        events: list[dict[str, object]] = http.get("/v1/history", params={"limit": 1000}).json()["events"]
    return events[::-1]  # oldest first


def assert_balanced(server: ServerProcess, *, acquired: int) -> list[dict[str, object]]:
    """Every lease acquired was released by its holder (none expired or revoked); returns the events."""
    events = history(server)
    taken = [e["lease"] for e in events if e["kind"] == "acquired"]
    released = [e["lease"] for e in events if e["kind"] == "released"]
    assert len(taken) == acquired, events
    assert sorted(map(str, taken)) == sorted(map(str, released)), events
    assert not [e for e in events if e["kind"] in ("expired", "revoked", "abandoned")], events
    return events


def job_output(pipeline: Pipeline, job: str) -> list[str]:
    """What one job printed: gitlab-ci-local prefixes each line with the job's name, padded, then `> `."""
    line = re.compile(rf"^{re.escape(job)} +> (.*)$")
    return [found.group(1) for found in map(line.match, pipeline.output.splitlines()) if found]


def assert_secret_free(pipeline: Pipeline, *jobs: str) -> None:
    """No key in the output; each of `jobs` ran SHOW once and its script never saw the lease token."""
    assert jobs, "name the jobs whose script runs SHOW"
    assert CLIENT_KEY not in pipeline.output
    for job in jobs:
        seen = [line for line in job_output(pipeline, job) if line.startswith("seen: ")]
        assert len(seen) == 1, f"job {job} printed {len(seen)} 'seen:' lines:\n{pipeline.output}"
        assert seen[0].endswith(" token=none"), f"job {job}'s script saw the lease token: {seen[0]}"
    leftovers = list((pipeline.repo / ".call-me").glob("*/*")) if (pipeline.repo / ".call-me").exists() else []
    assert leftovers == [], leftovers  # after_script removed the lease file (it holds the token)


def test_generated_files_are_current() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "gitlab-generate"), "--check"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr


def test_include_acquires_shows_the_lease_and_releases(project: MakeProject, server: ServerProcess) -> None:
    put_environment(server, "uat", properties={"url": "https://uat.example.com", "db-host": "db'1"})
    app = project("app")
    app.write(
        include_local(
            "deploy:\n"
            "  extends: .call-me\n"
            "  variables:\n"
            "    CALL_ME_ENVIRONMENT: uat\n"
            "  script:\n"
            f"    - {SHOW}\n"
            '    - echo "db=$CALL_ME_PROPERTY_DB_HOST lease=$CALL_ME_LEASE_ID"\n'
            '    - test "$(cat .call-me/$CI_JOB_ID/lease | wc -l)" -gt 0\n'
        )
    )
    pipeline = app.run()
    assert pipeline.returncode == 0, pipeline.output
    assert "seen: env=uat fence=" in pipeline.output
    assert "url=https://uat.example.com token=none" in pipeline.output
    assert "db=db'1 lease=l_" in pipeline.output
    assert "(with cli)" in pipeline.output  # auto: the call-me CLI is on PATH
    assert_secret_free(pipeline, "deploy")
    events = assert_balanced(server, acquired=1)
    acquired = next(e for e in events if e["kind"] == "acquired")
    assert acquired["holder"] == "org/app#1000 deploy"


def test_failing_script_still_releases(project: MakeProject, server: ServerProcess) -> None:
    app = project("app")
    app.write(
        include_local(
            "deploy:\n"
            "  extends: .call-me\n"
            "  variables:\n"
            "    CALL_ME_ENVIRONMENT: uat\n"
            "    CALL_ME_CLIENT: curl\n"
            "  script:\n"
            f"    - {SHOW}\n"
            "    - exit 3\n"
        )
    )
    pipeline = app.run()
    assert pipeline.returncode != 0, pipeline.output
    assert "seen: env=uat" in pipeline.output
    assert "call-me: released uat" in pipeline.output
    assert_secret_free(pipeline, "deploy")
    assert_balanced(server, acquired=1)


def test_two_pipelines_on_one_environment_take_turns(project: MakeProject, server: ServerProcess) -> None:
    jobs = include_local(
        "test:\n"
        "  extends: .call-me\n"
        "  variables:\n"
        "    CALL_ME_ENVIRONMENT: shared\n"
        "  script:\n"
        f"    - {SHOW}\n"
        "    - sleep 3\n"
    )
    first, second = project("app-a"), project("app-b")
    first.write(jobs)
    second.write(jobs)
    # One through the CLI, one through curl: the two paths share the one queue.
    procs = [first.start(), second.start(variables={"CALL_ME_CLIENT": "curl"})]
    pipelines = [first.finish(procs[0]), second.finish(procs[1])]
    for pipeline in pipelines:
        assert pipeline.returncode == 0, pipeline.output
        assert "seen: env=shared" in pipeline.output
        assert_secret_free(pipeline, "test")
    waited = [p for p in pipelines if "waiting for" in p.output]
    assert len(waited) == 1, [p.output for p in pipelines]
    events = assert_balanced(server, acquired=2)
    grants = [e for e in events if e["kind"] in ("acquired", "released")]
    assert [e["kind"] for e in grants] == ["acquired", "released", "acquired", "released"], events
    assert grants[0]["lease"] == grants[1]["lease"]
    assert {e["holder"] for e in grants} == {"org/app-a#1000 test", "org/app-b#1000 test"}


def test_component_label_pool_gives_concurrent_jobs_different_environments(
    project: MakeProject, server: ServerProcess
) -> None:
    for name in ("pool-1", "pool-2"):
        put_environment(server, name, labels=["pool"], properties={"url": f"https://{name}.example.com"})
    app = project("app", component=True)
    job = f"  extends: .call-me\n  script:\n    - {SHOW}\n    - sleep 2\n"
    app.write(
        f"include:\n  - component: {app.component_ref}\n    inputs:\n      label: pool\n      client: curl\n\n"
        f"one:\n{job}\ntwo:\n{job}"
    )
    pipeline = app.run()
    assert pipeline.returncode == 0, pipeline.output
    assert "seen: env=pool-1 fence=" in pipeline.output
    assert "seen: env=pool-2 fence=" in pipeline.output
    assert "url=https://pool-1.example.com" in pipeline.output
    assert pipeline.output.count("(with curl)") == 2  # the `client` input
    assert_secret_free(pipeline, "one", "two")
    events = assert_balanced(server, acquired=2)
    kinds = [e["kind"] for e in events if e["kind"] in ("acquired", "released")]
    assert kinds == ["acquired", "acquired", "released", "released"], events  # held at the same time


def _curl_only_path(folder: Path) -> str:
    """A PATH of symlinks to a shell, curl and the few coreutils the template uses: no Python, no jq."""
    folder.mkdir()
    for tool in ("sh", "bash", "curl", "cat", "date", "mkdir", "mv", "od", "rm", "sleep", "tr", "chmod", "wc", "test"):
        found = shutil.which(tool)
        assert found, tool
        (folder / tool).symlink_to(found)
    return str(folder)


def test_curl_only_path_without_python(project: MakeProject, server: ServerProcess, tmp_path: Path) -> None:
    put_environment(server, "uat", properties={"url": "https://uat.example.com"})
    app = project("app")
    app.write(
        include_local(
            "deploy:\n"
            "  extends: .call-me\n"
            "  variables:\n"
            "    CALL_ME_ENVIRONMENT: uat\n"
            "  script:\n"
            "    - if command -v python3 || command -v python || command -v call-me || command -v jq; then exit 9; fi\n"
            f"    - {SHOW}\n"
        )
    )
    pipeline = app.run(variables={"PATH": _curl_only_path(tmp_path / "bin")})
    assert pipeline.returncode == 0, pipeline.output
    assert "(with curl)" in pipeline.output
    assert "seen: env=uat fence=1 url=https://uat.example.com token=none" in pipeline.output
    assert "call-me: released uat" in pipeline.output
    assert_secret_free(pipeline, "deploy")
    assert_balanced(server, acquired=1)


def test_unusual_names_on_both_paths(project: MakeProject, server: ServerProcess) -> None:
    # The original accepted any name. By label, the curl path learns the environment from the server's text answer
    # alone (its own parser); the CLI path gets a name that begins with a dash. GitLab writes `$` as `$$`.
    by_label, by_cli = "feature/it's $HOME & co", "-dash'q'$x"
    put_environment(server, quote(by_label, safe=""), labels=["pool $1"], properties={"url": "https://f.example"})
    app = project("app")
    app.write(
        include_local(
            "by-label:\n"
            "  extends: .call-me\n"
            "  variables:\n"
            '    CALL_ME_LABEL: "pool $$1"\n'
            "    CALL_ME_CLIENT: curl\n"
            "  script:\n"
            f"    - {SHOW}\n"
            "by-cli:\n"
            "  extends: .call-me\n"
            "  variables:\n"
            """    CALL_ME_ENVIRONMENT: "-dash'q'$$x"\n"""
            "    CALL_ME_CLIENT: cli\n"
            "  script:\n"
            f"    - {SHOW}\n"
        )
    )
    pipeline = app.run()
    assert pipeline.returncode == 0, pipeline.output
    for job, name, url in (("by-label", by_label, "https://f.example"), ("by-cli", by_cli, "")):
        seen = re.compile(rf"seen: env={re.escape(name)} fence=[12] url={re.escape(url)} token=none")
        assert [line for line in job_output(pipeline, job) if seen.fullmatch(line)], pipeline.output
    for job, name in (("by-label", by_label), ("by-cli", by_cli)):
        assert any(line.startswith(f"call-me: released {name} (lease l_") for line in job_output(pipeline, job))
    assert_secret_free(pipeline, "by-label", "by-cli")
    events = assert_balanced(server, acquired=2)
    assert {e["environment"] for e in events if e["kind"] == "acquired"} == {by_label, by_cli}


def test_curl_timeout_leaves_the_queue(project: MakeProject, server: ServerProcess) -> None:
    with server.client(CLIENT_KEY) as http:
        held = http.post("/v1/leases", json={"environment": "uat", "holder": "someone else", "ttl": 120}).json()
    app = project("app")
    app.write(
        include_local(
            "deploy:\n"
            "  extends: .call-me\n"
            "  variables:\n"
            "    CALL_ME_ENVIRONMENT: uat\n"
            "    CALL_ME_TIMEOUT: 2\n"
            "    CALL_ME_CLIENT: curl\n"
            "  script:\n"
            "    - echo never runs\n"
        )
    )
    started = time.monotonic()
    pipeline = app.run()
    assert pipeline.returncode != 0, pipeline.output
    assert time.monotonic() - started < 20
    assert "gave up waiting for environment uat after 2s (CALL_ME_TIMEOUT) and left the queue" in pipeline.output
    assert "> never runs" not in pipeline.output
    kinds = [e["kind"] for e in history(server) if e["kind"] != "environment_changed"]
    assert kinds == ["acquired", "queued", "left"], kinds
    with server.client() as http:
        assert http.get("/v1/environments/uat").json()["queue"] == []
        token_header = {"X-Lease-Token": held["token"]}
        assert http.delete(f"/v1/leases/{held['id']}", headers=token_header).status_code == 204


def test_curl_retries_until_the_server_is_up(project: MakeProject, tmp_path: Path) -> None:
    (tmp_path / "late").mkdir()
    late = ServerProcess(tmp_path / "late", port=free_port())
    app = project("app", url=late.url)
    app.write(
        include_local(
            "deploy:\n"
            "  extends: .call-me\n"
            "  variables:\n"
            "    CALL_ME_ENVIRONMENT: uat\n"
            "    CALL_ME_CLIENT: curl\n"
            "  script:\n"
            f"    - {SHOW}\n"
        )
    )
    starter = threading.Timer(2.5, late.start)  # connection refused until then
    try:
        proc = app.start()
        starter.start()
        pipeline = app.finish(proc)
        assert pipeline.returncode == 0, pipeline.output
        assert "did not answer" in pipeline.output
        assert "retrying in 1s" in pipeline.output
        assert "seen: env=uat" in pipeline.output
        assert_balanced(late, acquired=1)
    finally:
        if starter.ident is not None:
            starter.join(20)
        if late.proc is not None:
            late.kill()


def test_missing_settings_fail_with_a_clear_message(project: MakeProject) -> None:
    app = project("app")
    app.write(include_local("deploy:\n  extends: .call-me\n  script:\n    - echo never runs\n"))
    pipeline = app.run(variables={"CALL_ME_CLIENT": "curl"})
    assert pipeline.returncode != 0
    assert "none of CALL_ME_ENVIRONMENT, CALL_ME_LABEL and CALL_ME_ENVIRONMENTS is set" in pipeline.output
    assert "> never runs" not in pipeline.output
    assert "no lease to release" in pipeline.output


def test_template_declares_only_hidden_jobs() -> None:
    yaml = import_tool("yaml")
    include = yaml.safe_load((ROOT / "gitlab-template" / "call-me.gitlab-ci.yml").read_text())
    assert list(include) == [".call-me"]
    spec, jobs = yaml.safe_load_all((ROOT / "templates" / "call-me.yml").read_text())
    assert set(spec["spec"]["inputs"]) == {"environment", "label", "environments", "ttl", "timeout", "holder", "client"}
    assert list(jobs) == [".call-me"]
    script = (ROOT / "gitlab-template" / "call-me.sh").read_text()
    for job in (include[".call-me"], jobs[".call-me"]):
        assert script in job["before_script"][0]
        assert script in job["after_script"][0]


def _shell_functions() -> str:
    """call-me.sh without its last lines (the dispatch on acquire|release): its functions only."""
    script = (ROOT / "gitlab-template" / "call-me.sh").read_text()
    return script[: script.rindex("\ncase ${1:-} in")] + "\n"


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_parser_takes_answers_apart_without_running_them(shell: str, tmp_path: Path) -> None:
    if shutil.which(shell) is None:
        tool_missing(f"no {shell} here")
    marker = tmp_path / "ran"
    answer = (
        "CALL_ME_LEASE_ID='l_1'\n"
        "CALL_ME_ENVIRONMENT='uat'\n"
        f"CALL_ME_PROPERTY_URL='$(touch {marker})`touch {marker}`'\\''; touch {marker}; '\\'''\n"
        "CALL_ME_PROPERTY_NOTE='two\nlines with = and '\\''quotes'\\'''\n"
        "PATH='/nowhere'\n"
        "CALL_ME_FUTURE='ignored'\n"
    )
    check = (
        'CALL_ME_STATE_DIR="$1"\n'
        + _shell_functions()
        + '_cm_parse "$2" || exit 3\n'
        + 'printf "%s|" "$CALL_ME_LEASE_ID" "$CALL_ME_ENVIRONMENT" "$CALL_ME_PROPERTY_URL" "$CALL_ME_PROPERTY_NOTE"'
        + ' "$_cm_props" "$PATH"\n'
        + 'for bad in "X=\'a\' b" "CALL_ME_FENCE=\'open" "lower=\'x\'" "CALL_ME_FENCE=bare"; do\n'
        + '    if _cm_parse "$bad"; then echo "accepted $bad"; exit 4; fi\n'
        + "done\n"
    )
    result = subprocess.run(
        [shell, "-c", check, shell, str(tmp_path), answer],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    assert result.returncode == 0, result
    values = result.stdout.split("|")
    assert values[:4] == [
        "l_1",
        "uat",
        f"$(touch {marker})`touch {marker}`'; touch {marker}; '",
        "two\nlines with = and 'quotes'",
    ]
    assert values[4].split() == ["CALL_ME_PROPERTY_URL", "CALL_ME_PROPERTY_NOTE"]
    assert values[5] != "/nowhere"
    assert not marker.exists()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL then after_script"])
def test_curl_job_stopped_while_waiting_leaves_the_queue(how: str, server: ServerProcess, tmp_path: Path) -> None:
    """As a runner stops a job: the before_script block in bash, its process group signalled."""
    yaml = import_tool("yaml")
    job = yaml.safe_load((ROOT / "gitlab-template" / "call-me.gitlab-ci.yml").read_text())[".call-me"]
    with server.client(CLIENT_KEY) as http:
        held = http.post("/v1/leases", json={"environment": "uat", "holder": "someone else", "ttl": 120}).json()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CALL_ME_URL": server.url,
        "CALL_ME_API_KEY": CLIENT_KEY,
        "CALL_ME_ENVIRONMENT": "uat",
        "CALL_ME_CLIENT": "curl",
        "CI_PROJECT_DIR": str(tmp_path),
        "CI_JOB_ID": "7",
    }
    script = "set -eo pipefail\n" + job["before_script"][0] + "echo script ran\n"
    proc = subprocess.Popen(
        ["bash", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    proc_group = proc.pid
    try:
        deadline = time.monotonic() + 15
        while not (tmp_path / ".call-me" / "7" / "ticket").exists():
            assert time.monotonic() < deadline, "no ticket file"
            time.sleep(0.05)
        time.sleep(0.5)  # inside the long-poll now
        os.killpg(proc_group, signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
    finally:
        output, _ = proc.communicate(timeout=30)
    assert "script ran" not in output
    if how == "SIGTERM":
        assert "stopped while waiting; leaving the queue" in output
    else:
        after = subprocess.run(
            ["bash", "-c", job["after_script"][0]], env=env, capture_output=True, text=True, timeout=30, check=False
        )
        assert "the job stopped while waiting; leaving the queue" in after.stderr
    with server.client() as http:
        deadline = time.monotonic() + 15  # SIGTERM: the trap's DELETE may still be on its way
        while http.get("/v1/environments/uat").json()["queue"]:
            assert time.monotonic() < deadline, "still queued"
            time.sleep(0.05)
        assert http.delete(f"/v1/leases/{held['id']}", headers={"X-Lease-Token": held["token"]}).status_code == 204
    kinds = [e["kind"] for e in history(server) if e["kind"] != "environment_changed"]
    assert kinds == ["acquired", "queued", "left", "released"], kinds


def _curl_job(script: str = f"    - {SHOW}\n") -> str:
    return include_local(
        "deploy:\n"
        "  extends: .call-me\n"
        "  variables:\n"
        "    CALL_ME_ENVIRONMENT: uat\n"
        "    CALL_ME_CLIENT: curl\n"
        f"  script:\n{script}"
    )


class _Gateway:
    """`answer` for a LossyProxy in front of the server: answers the acquire POSTs in its stead with
    `errors` (statuses, one per POST) while they last, then lets them through; records when each came."""

    def __init__(self, errors: list[int]) -> None:
        self.errors = list(errors)
        self.posts: list[float] = []
        self.sent: list[int] = []

    def __call__(self, request: Request) -> bytes | None:
        if (request.method, request.path) != ("POST", "/v1/leases"):
            return None
        self.posts.append(time.monotonic())
        if not self.errors:
            return None
        self.sent.append(self.errors.pop(0))
        return gateway_error(self.sent[-1])


def test_curl_retries_502_503_504_with_backoff_then_succeeds(project: MakeProject, server: ServerProcess) -> None:
    gateway = _Gateway([502, 503, 504])
    with LossyProxy(server.port, answer=gateway) as proxy:
        app = project("app", url=proxy.url)
        app.write(_curl_job())
        pipeline = app.run()
        posts = proxy.posts()
    assert pipeline.returncode == 0, pipeline.output
    for status, delay in ((502, 1), (503, 2), (504, 4)):
        assert f"did not answer (HTTP {status}); retrying in {delay}s" in pipeline.output
    assert "seen: env=uat" in pipeline.output
    assert [(post.status, post.forwarded) for post in posts] == [(502, False), (503, False), (504, False), (201, True)]
    # One request, retried: the same request_id each time.
    assert len({post.request_json()["request_id"] for post in posts}) == 1
    gaps = [later - earlier for earlier, later in zip(gateway.posts, gateway.posts[1:], strict=False)]
    assert [round(gap) for gap in gaps] == [1, 2, 4], gaps
    assert_secret_free(pipeline, "deploy")
    assert_balanced(server, acquired=1)


def test_curl_does_not_retry_a_4xx(project: MakeProject, server: ServerProcess) -> None:
    with LossyProxy(server.port, answer=lambda request: gateway_error(404)) as proxy:
        app = project("app", url=proxy.url)
        app.write(_curl_job("    - echo never runs\n"))
        pipeline = app.run()
        posts = proxy.posts()
    assert pipeline.returncode != 0, pipeline.output
    assert len(posts) == 1, posts
    assert "retrying" not in pipeline.output
    assert "could not acquire environment uat: the server answered HTTP 404" in pipeline.output
    assert "> never runs" not in pipeline.output
    assert history(server) == []


def test_curl_gives_up_on_gateway_errors_after_its_deadline(project: MakeProject, server: ServerProcess) -> None:
    gateway = _Gateway([502, 504, 503] * 10)
    with LossyProxy(server.port, answer=gateway) as proxy:
        app = project("app", url=proxy.url)
        app.write(_curl_job("    - echo never runs\n"))
        started = time.monotonic()
        pipeline = app.run(variables={"CALL_ME_RETRY_FOR": "3"})
        took = time.monotonic() - started
    assert pipeline.returncode != 0, pipeline.output
    # Tries at 0, 1 and 3 s, the next (7 s) past the deadline; whole-second clock: the third may be skipped.
    assert len(gateway.posts) in (2, 3), gateway.posts
    assert gateway.posts[-1] - gateway.posts[0] < 5
    assert took < 30
    assert f"giving up on {proxy.url}: HTTP {gateway.sent[-1]}" in pipeline.output
    assert (
        f"gave up after 3s of retries (CALL_ME_RETRY_FOR): {proxy.url} still answers HTTP {gateway.sent[-1]}, "
        "so the call-me server or a proxy in front of it cannot serve requests now"
    ) in pipeline.output
    assert "could not reach" not in pipeline.output  # it was reached: something answered every time
    assert re.search(r"^deploy +finished in .* FAIL 5 ", pipeline.output, re.MULTILINE), pipeline.output  # as the CLI's
    assert "> never runs" not in pipeline.output
    assert "no lease to release" in pipeline.output
    assert history(server) == []


@pytest.mark.parametrize("answer", ["201", "202"])
def test_curl_job_killed_while_its_first_post_is_answered_gives_back_what_it_made(
    answer: str, server: ServerProcess, tmp_path: Path
) -> None:
    """SIGKILL while the answer to the first POST is on its way (the proxy holds it, then loses it): the server
    made a lease (or a place in the queue) that the job never learnt of. after_script asks again with the same
    request_id and gives back what that request made, instead of leaving it to the TTL (or the ticket grace)."""
    yaml = import_tool("yaml")
    job = yaml.safe_load((ROOT / "gitlab-template" / "call-me.gitlab-ci.yml").read_text())[".call-me"]
    held = None
    if answer == "202":
        with server.client(CLIENT_KEY) as http:
            held = http.post("/v1/leases", json={"environment": "uat", "holder": "someone else"}).json()
    answered, killed = threading.Event(), threading.Event()

    def hold_then_lose(exchange: Exchange) -> bool:
        if (exchange.method, exchange.path) != ("POST", "/v1/leases"):
            return False
        answered.set()
        killed.wait(30)
        return True

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CALL_ME_API_KEY": CLIENT_KEY,
        "CALL_ME_ENVIRONMENT": "uat",
        "CALL_ME_CLIENT": "curl",
        "CI_PROJECT_DIR": str(tmp_path),
        "CI_JOB_ID": "8",
    }
    with LossyProxy(server.port, hold_then_lose) as proxy:
        script = "set -eo pipefail\n" + job["before_script"][0] + "echo script ran\n"
        proc = subprocess.Popen(
            ["bash", "-c", script], env={**env, "CALL_ME_URL": proxy.url}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            assert answered.wait(15), "the first POST never reached the server"
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            killed.set()
            output, _ = proc.communicate(timeout=30)
    assert "script ran" not in output
    assert not (tmp_path / ".call-me" / "8" / "lease").exists()
    assert not (tmp_path / ".call-me" / "8" / "ticket").exists()
    after = subprocess.run(
        ["bash", "-c", job["after_script"][0]], env={**env, "CALL_ME_URL": server.url},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "asking the server what it made" in after.stderr, after.stderr
    with server.client() as http:
        uat = http.get("/v1/environments/uat").json()
        assert uat["queue"] == []
        assert [lease["holder"] for lease in uat["leases"]] == ([] if held is None else ["someone else"])
    kinds = [e["kind"] for e in history(server) if e["kind"] != "environment_changed"]
    expected = ["acquired", "released"] if held is None else ["acquired", "queued", "left"]
    assert kinds == expected, kinds


def test_environments_are_held_at_once_on_both_paths(project: MakeProject, server: ServerProcess) -> None:
    # Several environments in one grant (issue 14): the curl path and the CLI path each hold both, one job after
    # the other (they need the same two), export one set of variables per environment, and release them all.
    put_environment(server, "uat", properties={"url": "https://uat.example.com"})
    put_environment(server, "payments-sandbox", properties={"url": "https://pay.example.com"})
    show = (
        """'echo "seen: uat=$CALL_ME_UAT_PROPERTY_URL pay=$CALL_ME_PAYMENTS_SANDBOX_PROPERTY_URL"""
        """ fence=$CALL_ME_UAT_FENCE group=${CALL_ME_GROUP_ID%%_*}"""
        """ token=${CALL_ME_UAT_LEASE_TOKEN:-${CALL_ME_GROUP_TOKEN:-${CALL_ME_LEASE_TOKEN:-none}}}"'"""
    )
    app = project("app")
    app.write(
        include_local(
            "".join(
                f"by-{client}:\n"
                "  extends: .call-me\n"
                "  variables:\n"
                '    CALL_ME_ENVIRONMENTS: "uat, payments-sandbox"\n'
                f"    CALL_ME_CLIENT: {client}\n"
                "  script:\n"
                f"    - {show}\n"
                for client in ("curl", "cli")
            )
        )
    )
    pipeline = app.run()
    assert pipeline.returncode == 0, pipeline.output
    for job in ("by-curl", "by-cli"):
        seen = re.compile(
            r"seen: uat=https://uat\.example\.com pay=https://pay\.example\.com fence=\d+ group=g token=none"
        )
        assert [line for line in job_output(pipeline, job) if seen.fullmatch(line)], pipeline.output
        assert any(
            line.startswith("call-me: released uat, payments-sandbox (group g_") for line in job_output(pipeline, job)
        )
    assert_secret_free(pipeline, "by-curl", "by-cli")
    events = assert_balanced(server, acquired=4)
    assert sorted(e["environment"] for e in events if e["kind"] == "acquired") == [
        "payments-sandbox",
        "payments-sandbox",
        "uat",
        "uat",
    ]


def test_component_input_environments_holds_them_at_once(project: MakeProject, server: ServerProcess) -> None:
    put_environment(server, "uat", properties={"url": "https://uat.example.com"})
    put_environment(server, "payments-sandbox", properties={"url": "https://pay.example.com"})
    app = project("app", component=True)
    show = """'echo "seen: pay=$CALL_ME_PAYMENTS_SANDBOX_PROPERTY_URL token=${CALL_ME_GROUP_TOKEN:-none}"'"""
    app.write(
        f"include:\n  - component: {app.component_ref}\n    inputs:\n      environments: uat, payments-sandbox\n\n"
        f"deploy:\n  extends: .call-me\n  script:\n    - {show}\n"
    )
    pipeline = app.run()
    assert pipeline.returncode == 0, pipeline.output
    assert "seen: pay=https://pay.example.com token=none" in pipeline.output
    assert_secret_free(pipeline, "deploy")
    events = assert_balanced(server, acquired=2)
    assert sorted(e["environment"] for e in events if e["kind"] == "acquired") == ["payments-sandbox", "uat"]


def test_curl_path_says_what_the_server_refused_in_its_words_not_its_json(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A wrong key on the curl path: one line with the status, the code and the problem's detail (API.md's
    problem document), not the raw JSON; exit 6 as the CLI's."""
    yaml = import_tool("yaml")
    job = yaml.safe_load((ROOT / "gitlab-template" / "call-me.gitlab-ci.yml").read_text())[".call-me"]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CALL_ME_URL": server.url,
        "CALL_ME_API_KEY": "not-a-key-of-this-server",
        "CALL_ME_ENVIRONMENT": "uat",
        "CALL_ME_CLIENT": "curl",
        "CI_PROJECT_DIR": str(tmp_path),
        "CI_JOB_ID": "9",
    }
    got = subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + job["before_script"][0]], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert got.returncode == 6, got.stderr
    said = [line for line in got.stderr.splitlines() if "could not acquire" in line]
    assert len(said) == 1, got.stderr
    assert said[0].startswith("call-me: could not acquire environment uat: the server answered HTTP 401 unauthorized: ")
    assert "{" not in said[0]
    assert "not-a-key-of-this-server" not in got.stderr
