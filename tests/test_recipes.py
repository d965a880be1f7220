"""The CI recipes of docs/ci/ run as their CI systems would run them, against a real call-me server.

Every fenced block of docs/ci/*.md whose info string names a file (```yaml title=.drone.yml) is taken
as written; the only substitution is the one the pages tell their reader to make (the server's
address). Each system's runner below does what that system does with the file, and no more: which
shell runs a step's lines and with which options, the order of the steps, which steps run after a
failed one (Jenkins' `post { always }`, CircleCI's `when: always`, Azure's `condition: always()`,
Bitbucket's `after-script`, Woodpecker's and Drone's `when: status`), how variables reach the next
step (CircleCI's $BASH_ENV, Azure's `##vso[task.setvariable]`, a file in the shared workspace), how
secrets reach a step, and the variables the system sets. The user's own commands are stand-ins that
record what they saw: `./deploy.sh ENV URL`, `make acceptance`, `ci/deploy-and-test.sh`, and `pip`
(the CLI is already on PATH). Each recipe runs twice: passing, and with `make acceptance` failing
(exit 3), where the release must still happen and the job still fail.

The YAML is also checked with the CI system's own JSON schema (check-jsonschema's builtin ones).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .serverproc import ADMIN_KEY, CLIENT_KEY, ServerProcess
from .tooling import import_tool

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "ci"
VENV_BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(\w+) title=(\S+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PLACEHOLDER_URL = "https://call-me.example.com"
PIP_LINE = "install git+https://github.com/call-me/call-me@v1"
TOKEN = re.compile(r"k_[A-Za-z0-9_-]{20,}")  # a lease token (server/secret.py)
STEP_TIMEOUT = 60
SCHEMAS = {
    ".circleci/config.yml": "circle-ci",
    "azure-pipelines.yml": "azure-pipelines",
    "ci/call-me-acquire.yml": "azure-pipelines",
    "ci/call-me-release.yml": "azure-pipelines",
    "bitbucket-pipelines.yml": "bitbucket-pipelines",
    ".woodpecker.yml": "woodpecker-ci",
    ".drone.yml": "drone-ci",
}
CURL_ONLY_TOOLS = ("sh", "curl", "cat", "date", "mkdir", "mv", "od", "rm", "sleep", "tr", "chmod")

pytestmark = pytest.mark.slow


def recipe_blocks() -> dict[str, str]:
    """{file name: text} of every titled block of docs/ci/."""
    found: dict[str, str] = {}
    for page in sorted(DOCS.glob("*.md")):
        for _lang, title, body in FENCE.findall(page.read_text()):
            assert title not in found, f"{title} is in two blocks"
            found[title] = body
    return found


@dataclass
class Job:
    """What a run of a recipe did: whether the CI system would mark it failed, and all it printed."""

    failed: bool = False
    aborted: bool = False
    output: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(self.output)


class Workspace:
    """A checkout with the user's stand-in commands, and a PATH with the CLI, `make` and `pip` stand-ins."""

    def __init__(self, root: Path, server: ServerProcess, acceptance_exit: int | str) -> None:
        self.root = root
        self.dir = root / "workspace"
        self.bin = root / "bin"
        self.record = root / "record"
        self.server = server
        for folder in (self.dir / "ci", self.bin):
            folder.mkdir(parents=True)
        self.record.touch()
        seen = "env=$CALL_ME_ENVIRONMENT fence=$CALL_ME_FENCE token=${CALL_ME_LEASE_TOKEN:-none}"
        self._script(self.dir / "deploy.sh", f'echo "deploy $1 $2 {seen}" >>"$RECORD"\n')
        self._script(
            self.dir / "ci" / "deploy-and-test.sh",
            './deploy.sh "$CALL_ME_ENVIRONMENT" "$CALL_ME_PROPERTY_URL"\nmake acceptance\n',
        )
        # ACCEPTANCE_EXIT=hang: `make acceptance` runs until the job is aborted (SIGTERM to its process group).
        self._script(
            self.bin / "make",
            f'echo "make $* {seen}" >>"$RECORD"\n'
            'if [ "$ACCEPTANCE_EXIT" = hang ]; then : >"$RECORD.hang"; exec sleep 300; fi\n'
            'exit "$ACCEPTANCE_EXIT"\n',
        )
        self.hang = root / "record.hang"
        self._script(self.bin / "pip", 'echo "pip $*" >>"$RECORD"\n')
        shutil.copy(ROOT / "gitlab-template" / "call-me.sh", self.dir / "ci" / "call-me.sh")
        self.env = {
            "PATH": f"{self.bin}:{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(root),
            "LANG": "C.UTF-8",
            "RECORD": str(self.record),
            "ACCEPTANCE_EXIT": str(acceptance_exit),
        }

    @staticmethod
    def _script(path: Path, body: str) -> None:
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)

    def curl_only_path(self) -> str:
        folder = self.root / "curl-only"
        if not folder.exists():
            folder.mkdir()
            for tool in CURL_ONLY_TOOLS:
                found = shutil.which(tool)
                assert found, tool
                (folder / tool).symlink_to(found)
        return str(folder)

    def run(self, job: Job, name: str, argv: list[str], env: dict[str, str]) -> int:
        """Runs one step; if `make acceptance` hangs in it, aborts it as a CI system does: SIGTERM to the
        step's process group (the shell, call-me and the command alike), then waits for it to end."""
        out, err = self.root / "step.out", self.root / "step.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(
                argv, cwd=self.dir, env={**self.env, **env}, stdout=stdout, stderr=stderr, start_new_session=True
            )
            try:
                deadline = time.monotonic() + STEP_TIMEOUT
                while proc.poll() is None and time.monotonic() < deadline:
                    if self.hang.exists():
                        self.hang.unlink()
                        os.killpg(proc.pid, signal.SIGTERM)
                        job.aborted = True
                        break
                    time.sleep(0.05)
                code = proc.wait(timeout=STEP_TIMEOUT)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        job.ran.append(name)
        job.output += [f"--- {name} (exit {code})", out.read_text(), err.read_text()]
        return code


def _substituted(text: str, server: ServerProcess) -> str:
    return text.replace(PLACEHOLDER_URL, server.url)


# -- Jenkins -------------------------------------------------------------------------------------------------


def run_jenkins(ws: Workspace, blocks: dict[str, str], title: str) -> Job:
    """Declarative pipeline: `environment {}` (credentials() gives the secret text), the `sh '''...'''` steps of
    the stages in order until one fails, then those of `post { always {} }`. Jenkins runs `sh` with -xe."""
    groovy = _substituted(blocks[title], ws.server)
    ci = {"WORKSPACE": str(ws.dir), "JOB_NAME": "shop", "BUILD_NUMBER": "41", "BUILD_URL": "https://ci/job/shop/41/"}
    env = dict(ci)
    block = re.search(r"^    environment \{\n(.*?)^    \}", groovy, re.MULTILINE | re.DOTALL)
    assert block, "no environment block"
    for line in block.group(1).splitlines():
        line = line.strip()
        if not line or line.startswith("//"):
            continue
        name, value = (part.strip() for part in line.split("=", 1))
        if value.startswith("credentials("):
            assert value == "credentials('call-me-api-key')", value
            env[name] = CLIENT_KEY
        elif value.startswith("'"):
            env[name] = value.strip("'")
        else:  # a GString: ${NAME} from Jenkins' variables
            env[name] = re.sub(r"\$\{(\w+)\}", lambda m: ci[m.group(1)], value.strip('"'))
    post = groovy.index("\n    post {") if "\n    post {" in groovy else len(groovy)
    job = Job()
    for found in re.finditer(r"sh '''\n(.*?)'''", groovy, re.DOTALL):
        script = textwrap.dedent(found.group(1))
        assert "\\" not in script, "Groovy would read a backslash in ''' itself"
        always = found.start() > post
        if always:
            assert re.search(r"post \{\s*always \{\s*$", groovy[: found.start()]), "a post step that is not `always`"
        if job.failed and not always:
            continue
        if ws.run(job, f"sh{' (post always)' if always else ''}", ["sh", "-xe", "-c", script], env):
            job.failed = True
    return job


# -- CircleCI ------------------------------------------------------------------------------------------------


def run_circleci(ws: Workspace, blocks: dict[str, str], title: str) -> Job:
    """The one job of the workflow, in the context's environment: each `run` a new `bash -eo pipefail` that
    sources $BASH_ENV first; a reusable command expanded with its parameters; `when: always` after a failure."""
    yaml = import_tool("yaml")
    config = yaml.safe_load(_substituted(blocks[title], ws.server))
    [(job_name, job_config)] = config["jobs"].items()
    [workflow] = config["workflows"].values()
    assert workflow["jobs"] == [{job_name: {"context": "call-me"}}]
    bash_env = ws.root / "bash_env"
    bash_env.touch()
    env = {
        "CALL_ME_URL": ws.server.url,  # the context
        "CALL_ME_API_KEY": CLIENT_KEY,
        "CIRCLE_PROJECT_REPONAME": "shop",
        "CIRCLE_BUILD_NUM": "41",
        "CIRCLE_JOB": job_name,
        "CIRCLE_BUILD_URL": "https://circleci.com/gh/acme/shop/41",
        "BASH_ENV": str(bash_env),
        **{k: str(v) for k, v in job_config.get("environment", {}).items()},
    }

    def expand(step: Any) -> list[dict[str, Any]]:
        if step == "checkout":
            return []
        name, args = (step, {}) if isinstance(step, str) else next(iter(step.items()))
        if name == "run":
            return [{"command": args} if isinstance(args, str) else args]
        command = config["commands"][name]
        values = {key: spec.get("default") for key, spec in command.get("parameters", {}).items()}
        values.update(args or {})

        def parameter(found: re.Match[str]) -> str:
            return str(values[found.group(1)])

        runs: list[dict[str, Any]] = []
        for inner in command["steps"]:
            for run in expand(inner):
                runs.append({**run, "command": re.sub(r"<< parameters\.(\w+) >>", parameter, run["command"])})
        return runs

    job = Job()
    for step in job_config["steps"]:
        for run in expand(step):
            always = run.get("when", "on_success") == "always"
            if job.failed and not always:
                continue
            if ws.run(
                job, run.get("name", run["command"][:40]), ["bash", "-eo", "pipefail", "-c", run["command"]], env
            ):
                job.failed = True
    return job


# -- Azure Pipelines -----------------------------------------------------------------------------------------


def run_azure(ws: Workspace, blocks: dict[str, str], title: str) -> Job:
    """Steps in order, templates expanded with their parameters (${{ parameters.X }}); `condition: always()`
    after a failure. The variable group's CALL_ME_URL is in every step's environment, its secret CALL_ME_API_KEY
    only where a step maps it with $(...) in `env:`; `##vso[task.setvariable variable=X]V` sets X for the
    steps after. Scripts run as `bash --noprofile --norc`."""
    yaml = import_tool("yaml")
    pipeline = yaml.safe_load(_substituted(blocks[title], ws.server))
    assert pipeline["variables"] == [{"group": "call-me"}]
    temp = ws.root / "agent-temp"
    temp.mkdir()
    macros = {"CALL_ME_URL": ws.server.url, "CALL_ME_API_KEY": CLIENT_KEY, "Agent.TempDirectory": str(temp)}
    env = {
        "CALL_ME_URL": ws.server.url,
        "AGENT_TEMPDIRECTORY": str(temp),
        "BUILD_REPOSITORY_NAME": "shop",
        "BUILD_BUILDNUMBER": "20261202.1",
        "SYSTEM_JOBDISPLAYNAME": "Job",
    }

    def steps(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in items:
            if "template" not in item:
                out.append(item)
                continue
            template_text = blocks[item["template"]]
            declared = yaml.safe_load(template_text).get("parameters", [])
            values = {p["name"]: p.get("default", "") for p in declared}
            values.update(item.get("parameters", {}))
            assert set(values) == {p["name"] for p in declared}, "a parameter the template does not declare"
            text = re.sub(
                r"\$\{\{ parameters\.(\w+) \}\}", lambda m, values=values: str(values[m.group(1)]), template_text
            )
            out += steps(yaml.safe_load(text)["steps"])
        return out

    job = Job()
    for step in steps(pipeline["steps"]):
        always = step.get("condition") == "always()"
        if job.failed and not always:
            continue
        mapped = {
            name: re.sub(r"\$\(([\w.]+)\)", lambda m: macros[m.group(1)], str(value))
            for name, value in step.get("env", {}).items()
        }
        before = len(job.output)
        if ws.run(
            job,
            step.get("displayName", "script"),
            ["bash", "--noprofile", "--norc", "-c", step["script"]],
            {**env, **mapped},
        ):
            job.failed = True
        for line in job.output[before + 1].splitlines():  # its stdout
            found = re.fullmatch(r"##vso\[task\.setvariable variable=([\w.]+)\](.*)", line)
            if found:
                env[found.group(1).upper().replace(".", "_")] = found.group(2)
    return job


# -- Bitbucket Pipelines -------------------------------------------------------------------------------------


def run_bitbucket(ws: Workspace, blocks: dict[str, str], title: str) -> Job:
    """The default pipeline's step: its `script` lines in one shell until one fails, then `after-script` with
    BITBUCKET_EXIT_CODE. Repository variables are environment variables."""
    yaml = import_tool("yaml")
    config = yaml.safe_load(_substituted(blocks[title], ws.server))
    [entry] = config["pipelines"]["default"]
    step = entry["step"]
    env = {
        "CALL_ME_URL": ws.server.url,
        "CALL_ME_API_KEY": CLIENT_KEY,
        "BITBUCKET_REPO_FULL_NAME": "acme/shop",
        "BITBUCKET_BUILD_NUMBER": "41",
    }
    job = Job()
    code = ws.run(job, "script", ["bash", "-e", "-c", "\n".join(step["script"])], env)
    job.failed = code != 0
    ws.run(
        job,
        "after-script",
        ["bash", "-e", "-c", "\n".join(step.get("after-script", []))],
        {**env, "BITBUCKET_EXIT_CODE": str(code)},
    )
    return job


# -- Woodpecker and Drone ------------------------------------------------------------------------------------


def run_woodpecker(ws: Workspace, blocks: dict[str, str], title: str) -> Job:
    """Steps in order, each a container of its own on the shared workspace: `commands` in one `sh -e`, with the
    step's `environment` (from_secret: the secret) and the system's variables; `${NAME}` replaced in the file
    beforehand (`$$` is a `$`); `when: status` with `failure` runs after a failed step. A curlimages/curl step
    has no Python and no call-me: only a shell, curl and coreutils."""
    yaml = import_tool("yaml")
    drone = title == ".drone.yml"
    ci = (
        {"DRONE_REPO": "acme/shop", "DRONE_BUILD_NUMBER": "41", "CI_WORKSPACE": str(ws.dir)}
        if drone
        else {"CI_REPO": "acme/shop", "CI_PIPELINE_NUMBER": "41", "CI_WORKSPACE": str(ws.dir)}
    )

    def preprocess(found: re.Match[str]) -> str:
        return "$" if found.group(0) == "$$" else ci.get(found.group(1), "")

    text = re.sub(r"\$\$|\$\{(\w+)\}", preprocess, _substituted(blocks[title], ws.server))
    config = yaml.safe_load(text)
    if drone:
        assert (config["kind"], config["type"]) == ("pipeline", "docker")
    secrets = {"call_me_url": ws.server.url, "call_me_api_key": CLIENT_KEY}
    job = Job()
    for step in config["steps"]:
        when = step.get("when", {})
        status = (when[0] if isinstance(when, list) else when).get("status", ["success"]) if when else ["success"]
        if job.failed and "failure" not in status:
            continue
        env = {**ci, ("DRONE_STEP_NAME" if drone else "CI_STEP_NAME"): step["name"]}
        for name, value in step.get("environment", {}).items():
            env[name] = secrets[value["from_secret"]] if isinstance(value, dict) else str(value)
        if step["image"].startswith("curlimages/curl:"):
            env["PATH"] = ws.curl_only_path()
        if ws.run(job, step["name"], ["sh", "-e", "-c", "\n".join(step["commands"])], env):
            job.failed = True
    return job


Runner = Callable[[Workspace, dict[str, str], str], Job]
RECIPES: dict[str, tuple[Runner, str]] = {
    "jenkins": (run_jenkins, "Jenkinsfile"),
    "jenkins-single-stage": (run_jenkins, "Jenkinsfile.single-stage"),
    "circleci": (run_circleci, ".circleci/config.yml"),
    "azure": (run_azure, "azure-pipelines.yml"),
    "bitbucket": (run_bitbucket, "bitbucket-pipelines.yml"),
    "woodpecker": (run_woodpecker, ".woodpecker.yml"),
    "drone": (run_woodpecker, ".drone.yml"),
}


def history_kinds(server: ServerProcess) -> list[str]:
    with server.client(ADMIN_KEY) as http:
        events = http.get("/v1/history", params={"limit": 1000}).json()["events"]
    return [e["kind"] for e in reversed(events) if e["kind"] != "environment_changed"]


def test_every_titled_block_has_a_runner_or_a_schema() -> None:
    blocks = recipe_blocks()
    used = {title for _, title in RECIPES.values()} | set(SCHEMAS)
    assert set(blocks) == used, set(blocks) ^ used
    for page in ("jenkins", "circleci", "azure-pipelines", "bitbucket", "woodpecker"):
        assert (DOCS / f"{page}.md").exists(), page


@pytest.mark.parametrize("outcome", ["pass", "acceptance-fails"])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_runs_against_a_real_server(recipe: str, outcome: str, server: ServerProcess, tmp_path: Path) -> None:
    with server.client() as http:
        assert http.put(
            "/v1/environments/uat", json={"properties": {"url": "https://uat.example.com"}}
        ).status_code in (200, 201)
    ws = Workspace(tmp_path, server, acceptance_exit=3 if outcome == "acceptance-fails" else 0)
    runner, title = RECIPES[recipe]
    blocks = recipe_blocks()
    job = runner(ws, blocks, title)
    output = job.text()
    record = ws.record.read_text().splitlines()
    seen = [line for line in record if not line.startswith("pip ")]
    # The job's commands ran while it held uat, saw the lease and its properties, never its token.
    assert seen[0].startswith("deploy uat https://uat.example.com env=uat fence="), (record, output)
    assert seen[1].startswith("make acceptance env=uat fence="), (record, output)
    assert all(line.endswith(" token=none") for line in seen), record
    assert job.failed == (outcome == "acceptance-fails"), output
    # Released by the job itself (none expired), also after the failed command.
    assert history_kinds(server) == ["acquired", "released"], output
    assert CLIENT_KEY not in output
    assert not TOKEN.search(output), TOKEN.search(output)
    if "pip install" in blocks[title]:
        assert f"pip {PIP_LINE}" in record, record
    leftovers = [p for p in (ws.dir / ".call-me").rglob("*") if p.is_file()] if (ws.dir / ".call-me").exists() else []
    assert leftovers == [], leftovers  # nothing of the lease (the token) left in the workspace


@pytest.mark.parametrize("title", sorted(SCHEMAS))
def test_recipe_yaml_matches_its_ci_systems_schema(title: str, tmp_path: Path) -> None:
    path = tmp_path / Path(title).name
    path.write_text(recipe_blocks()[title])
    result = subprocess.run(
        [
            str(VENV_BIN / "check-jsonschema"),
            "--regex-variant",
            "python",
            "--builtin-schema",
            f"vendor.{SCHEMAS[title]}",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# What each system documents for an aborted (cancelled, stopped) job: Jenkins runs `post { always }` after an
# abort, Azure runs `condition: always()` steps after a cancel, and `call-me run` (Bitbucket, Jenkins' one-stage
# pipeline) passes SIGTERM on to its command and releases. CircleCI skips `when: always` steps on cancel, and
# Woodpecker and Drone stop their containers: those recipes rely on the TTL, and are not run here.
@pytest.mark.parametrize("recipe", ["jenkins", "jenkins-single-stage", "azure", "bitbucket"])
def test_recipe_aborted_while_testing_still_releases(recipe: str, server: ServerProcess, tmp_path: Path) -> None:
    ws = Workspace(tmp_path, server, acceptance_exit="hang")
    runner, title = RECIPES[recipe]
    job = runner(ws, recipe_blocks(), title)
    output = job.text()
    assert job.aborted, output  # `make acceptance` ran, holding the lease, and the step was stopped there
    assert job.failed, output
    assert [line.split()[:2] for line in ws.record.read_text().splitlines() if not line.startswith("pip ")] == [
        ["deploy", "uat"],
        ["make", "acceptance"],
    ]
    assert history_kinds(server) == ["acquired", "released"], output
    assert CLIENT_KEY not in output
    assert not TOKEN.search(output), TOKEN.search(output)
