"""What a GitHub runner gives a Docker action's steps, and how it reads what they leave, for tests.

A `FakeJob` is one job of one run: a workspace, a file_commands folder, the run's `GITHUB_*`
context and the `with:` inputs of the step that uses the action. `step_env` makes the
environment of one step as the runner does: every input that action.yml declares as
`INPUT_<NAME>` (upper-cased, hyphens kept; defaults filled in), fresh output, state and summary
files, and in the post step `STATE_<name>` for each state the main step saved. The file
commands are parsed as the runner parses them (`name=value` lines and `name<<DELIMITER`
blocks), strictly: anything the runner would refuse fails the test. `post_runs` decides, as the
runner does with action.yml's `post-if`, whether the post step runs at all.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

# Where the runner mounts things in a Docker action's container.
CONTAINER_WORKSPACE = "/github/workspace"
CONTAINER_FILE_COMMANDS = "/github/file_commands"


def load_action() -> dict[str, Any]:
    with (ROOT / "action.yml").open() as file:
        action: dict[str, Any] = yaml.safe_load(file)
    return action


def parse_file_commands(text: str) -> dict[str, str]:
    """The pairs of a GITHUB_OUTPUT or GITHUB_STATE file, as the runner reads them."""
    pairs: dict[str, str] = {}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if line == "":
            continue
        equals, heredoc = line.find("="), line.find("<<")
        if heredoc >= 0 and (equals < 0 or heredoc < equals):
            name, delimiter = line[:heredoc], line[heredoc + 2 :]
            if not name or not delimiter:
                raise ValueError(f"invalid heredoc line {line!r}")
            value_lines = []
            while True:
                if index >= len(lines):
                    raise ValueError(f"no closing delimiter {delimiter!r} for {name!r}")
                if lines[index] == delimiter:
                    index += 1
                    break
                value_lines.append(lines[index])
                index += 1
            pairs[name] = "\n".join(value_lines)
        elif equals > 0:
            pairs[line[:equals]] = line[equals + 1 :]
        else:
            raise ValueError(f"invalid file command line {line!r}")
    return pairs


@dataclass
class StepFiles:
    """One step's file commands, on the host."""

    output: Path
    state: Path
    summary: Path

    def outputs(self) -> dict[str, str]:
        return parse_file_commands(self.output.read_text(encoding="utf-8"))

    def saved_state(self) -> dict[str, str]:
        return parse_file_commands(self.state.read_text(encoding="utf-8"))

    def summary_text(self) -> str:
        return self.summary.read_text(encoding="utf-8")


@dataclass
class FakeJob:
    root: Path
    with_: dict[str, str]
    job: str = "deploy"
    run_id: str = field(default_factory=lambda: str(uuid.uuid4().int % 10**10))
    repository: str = "org/app"
    # Inside a container the runner's folders appear at /github/...; on the host they are under root.
    in_container: bool = False
    steps: list[StepFiles] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workspace = self.root / "workspace"
        self.file_commands = self.root / "file_commands"
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.file_commands.mkdir(parents=True, exist_ok=True)

    @property
    def holder(self) -> str:
        return f"{self.repository}#{self.run_id}/{self.job}"

    def step_env(self, state: dict[str, str] | None = None) -> tuple[dict[str, str], StepFiles]:
        """The variables of one step of the action (main: no state; post: the main step's state)."""
        files = StepFiles(
            output=self._new_file("set_output"),
            state=self._new_file("save_state"),
            summary=self._new_file("step_summary"),
        )
        self.steps.append(files)
        env = {
            **input_env(load_action(), self.with_),
            **self.context_env(),
            "GITHUB_OUTPUT": self._seen(files.output),
            "GITHUB_STATE": self._seen(files.state),
            "GITHUB_STEP_SUMMARY": self._seen(files.summary),
            "GITHUB_ENV": self._seen(self._new_file("set_env")),
            "GITHUB_PATH": self._seen(self._new_file("add_path")),
        }
        env.update({f"STATE_{name}": value for name, value in (state or {}).items()})
        return env, files

    def context_env(self) -> dict[str, str]:
        return {
            "CI": "true",
            "GITHUB_ACTIONS": "true",
            "GITHUB_ACTION": "lock",
            "GITHUB_ACTOR": "octocat",
            "GITHUB_EVENT_NAME": "push",
            "GITHUB_JOB": self.job,
            "GITHUB_REF": "refs/heads/main",
            "GITHUB_REPOSITORY": self.repository,
            "GITHUB_RUN_ATTEMPT": "1",
            "GITHUB_RUN_ID": self.run_id,
            "GITHUB_RUN_NUMBER": "7",
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
            "GITHUB_WORKFLOW": "deploy and test",
            "GITHUB_WORKSPACE": CONTAINER_WORKSPACE if self.in_container else str(self.workspace),
            "RUNNER_OS": "Linux",
        }

    def _new_file(self, kind: str) -> Path:
        path = self.file_commands / f"{kind}_{uuid.uuid4()}"
        path.touch()
        # A container's root may map to another uid (rootless podman): let it write.
        os.chmod(path, 0o666)  # noqa: S103 - test files in a temporary folder, no secrets of the host
        return path

    def _seen(self, path: Path) -> str:
        """A file's path as the step sees it."""
        if self.in_container:
            return f"{CONTAINER_FILE_COMMANDS}/{path.name}"
        return str(path)


def post_runs(action: dict[str, Any], job_status: str) -> bool:
    """Whether the runner runs the action's post step in a job whose status is `job_status` by then.

    The runner decides with action.yml's `runs.post-if` (default `always()`), evaluated when the
    post step's turn comes: `success` while no step failed, `failure` once one did, `cancelled`
    for a cancelled run. Only the status functions are understood here; any other condition
    fails the test instead of being guessed at.
    """
    condition = str(action["runs"].get("post-if", "always()")).strip()
    if condition.startswith("${{") and condition.endswith("}}"):
        condition = condition[3:-2].strip()
    holds = {
        "always()": True,
        "success()": job_status == "success",
        "failure()": job_status == "failure",
        "cancelled()": job_status == "cancelled",
        "!cancelled()": job_status != "cancelled",
    }
    if condition not in holds:
        raise ValueError(f"post-if {condition!r} is beyond what this fake runner evaluates")
    return holds[condition]


def input_env(action: dict[str, Any], with_: dict[str, str]) -> dict[str, str]:
    """INPUT_* as the runner sets them for a Docker action: every declared input, defaults filled in."""
    declared = action.get("inputs") or {}
    unknown = set(with_) - set(declared)
    assert not unknown, f"inputs not declared in action.yml: {sorted(unknown)}"
    env = {}
    for name, spec in declared.items():
        default = (spec or {}).get("default", "")
        value = with_.get(name, default)
        env[f"INPUT_{name.upper().replace(' ', '_')}"] = str(value)
    return env
