"""action.yml against GitHub's schema (check-jsonschema), and the workflows through actionlint.

Both tools come with the dev extra and run offline: check-jsonschema's vendor schemas ship in
its package, and actionlint is one binary. Every network route is pointed at a closed port, so
a tool that tried to download something would fail here. Each check is also shown to refuse a
broken file, so that a tool that checks nothing cannot pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there
TIMEOUT = 60.0


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert path, f"{name} is missing: pip install -e '.[dev]'"
    return path


def _run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **dict.fromkeys(("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"), CLOSED),
        "NO_PROXY": "",
        "no_proxy": "",
    }
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def test_action_yml_matches_the_github_actions_schema() -> None:
    proc = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.github-actions", "action.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_action_schema_check_refuses_a_broken_action(tmp_path: Path) -> None:
    broken = (ROOT / "action.yml").read_text().replace("post-if:", "post-iff:")
    (tmp_path / "action.yml").write_text(broken)
    proc = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.github-actions", "action.yml", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr


def test_workflows_match_the_github_workflows_schema() -> None:
    assert WORKFLOWS, "no workflows in .github/workflows"
    proc = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_workflow_passes_actionlint(workflow: Path) -> None:
    # From the root, so that `uses: ./` is checked against action.yml's inputs.
    proc = _run(_tool("actionlint"), "-no-color", str(workflow.relative_to(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_checks_the_example_against_action_yml(tmp_path: Path) -> None:
    # A copy of the project with an input the action does not declare: actionlint must say so.
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(ROOT / "action.yml", tmp_path / "action.yml")
    example = (ROOT / ".github" / "workflows" / "example.yml").read_text()
    assert "          api-key:" in example
    broken = example.replace("          api-key:", "          api_key:", 1)
    (tmp_path / ".github" / "workflows" / "example.yml").write_text(broken)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=TIMEOUT)
    proc = _run(_tool("actionlint"), "-no-color", ".github/workflows/example.yml", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'input "api_key" is not defined' in proc.stdout


def test_the_release_commits_action_yml_passes_both_checks(tmp_path: Path) -> None:
    """What the release workflow makes of action.yml (scripts/action-image with the pushed image's digest) is
    still a valid action, and actionlint still checks the example workflow's `uses: ./` against it."""
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(ROOT / "action.yml", tmp_path / "action.yml")
    shutil.copy(ROOT / ".github" / "workflows" / "example.yml", tmp_path / ".github" / "workflows" / "example.yml")
    reference = "docker://ghcr.io/call-me/call-me@sha256:" + "0123456789abcdef" * 4
    script = str(ROOT / "scripts" / "action-image")
    proc = _run(sys.executable, script, "--file", str(tmp_path / "action.yml"), reference)
    assert proc.returncode == 0, proc.stderr
    before = (ROOT / "action.yml").read_text().splitlines()
    after = (tmp_path / "action.yml").read_text().splitlines()
    assert [(a, b) for a, b in zip(before, after, strict=True) if a != b] == [
        ("  image: Dockerfile", f"  image: {reference}")
    ]
    proc = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.github-actions", "action.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=TIMEOUT)
    proc = _run(_tool("actionlint"), "-no-color", ".github/workflows/example.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Anything but the Dockerfile or a docker:// reference is refused, and the file is left as it was.
    proc = _run(sys.executable, script, "--file", str(tmp_path / "action.yml"), "ghcr.io/no-scheme:v1")
    assert proc.returncode == 2
    assert f"  image: {reference}" in (tmp_path / "action.yml").read_text()
