"""The Buildkite plugin (call-me-buildkite-plugin/): its hooks run with bats, as Buildkite plugins are
tested, against a real call-me server; and its plugin.yml checked against what Buildkite reads of it.

Each `@test` of call-me-buildkite-plugin/tests/hooks.bats is one test here, run alone (bats --filter)
against a fresh server of its own. scripts/bats-setup installs Debian's bats the first time (a session
fixture calls it); where that cannot work these tests skip and say why, or fail under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .serverproc import ADMIN_KEY, CLIENT_KEY, ServerProcess
from .tooling import import_tool, run_setup

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "call-me-buildkite-plugin"
BATS_FILE = PLUGIN / "tests" / "hooks.bats"
VENV_BIN = Path(sys.executable).parent  # where pip put the `call-me` console script
PROPERTIES = {"environment", "label", "ttl", "timeout", "holder", "client"}

pytestmark = pytest.mark.slow


def _bats_tests() -> list[str]:
    return re.findall(r'^@test "([^"]+)" \{$', BATS_FILE.read_text(), re.MULTILINE)


@pytest.fixture(scope="session")
def bats() -> str:
    run_setup(ROOT / "scripts" / "bats-setup", "bats")
    return "bats"


def test_bats_file_has_the_tests_this_module_expects() -> None:
    names = _bats_tests()
    assert len(names) == len(set(names)) >= 7, names
    for word in ("pass", "curl path", "fail", "cancel:", "cancel while waiting", "timeout", "no target"):
        assert any(word in name for name in names), word


@pytest.mark.parametrize("name", _bats_tests(), ids=lambda name: name.split(":")[0].replace(" ", "-"))
def test_hooks(name: str, bats: str, server: ServerProcess, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALL_ME_", "BUILDKITE", "CI_"))}
    env.update(
        {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(tmp_path),
            "TMPDIR": str(tmp_path),
            "CALL_ME_URL": server.url,
            "CALL_ME_API_KEY": CLIENT_KEY,
            "CALL_ME_TEST_ADMIN_KEY": ADMIN_KEY,
        }
    )
    result = subprocess.run(
        [bats, "--tap", "--filter", f"^{re.escape(name)}$", str(BATS_FILE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, report
    assert re.search(r"^1\.\.1$", result.stdout, re.MULTILINE), report  # the filter found exactly this test
    assert re.search(r"^ok 1 ", result.stdout, re.MULTILINE), report


def test_generated_hooks_are_current_and_executable() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "gitlab-generate"), "--check"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    script = (ROOT / "gitlab-template" / "call-me.sh").read_text()
    for hook in ("pre-command", "pre-exit"):
        path = PLUGIN / "hooks" / hook
        assert os.access(path, os.X_OK), path
        text = path.read_text()
        assert text.startswith("#!/bin/bash\n")
        assert script in text  # the one source, whole


def test_shell_is_shellcheck_clean(bats: str) -> None:
    """call-me.sh as POSIX sh (README says so), the generated hooks as bash, the bats file and the setup script.
    scripts/bats-setup (the `bats` fixture) brings shellcheck too."""
    checks = [
        ["-s", "sh", "gitlab-template/call-me.sh"],
        ["call-me-buildkite-plugin/hooks/pre-command", "call-me-buildkite-plugin/hooks/pre-exit"],
        ["-s", "bash", "call-me-buildkite-plugin/tests/hooks.bats", "scripts/bats-setup"],
    ]
    for args in checks:
        result = subprocess.run(
            ["shellcheck", *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_plugin_yml_is_what_buildkite_reads() -> None:
    """The fields Buildkite's plugin linter requires (name, description, author, requirements, and a
    configuration JSON schema with properties, required and additionalProperties), a valid JSON schema
    whose properties are the ones the hooks read, and that accepts README's examples and refuses typos."""
    yaml = import_tool("yaml")
    jsonschema = import_tool("jsonschema")
    plugin = yaml.safe_load((PLUGIN / "plugin.yml").read_text())
    for field, kind in (("name", str), ("description", str), ("author", str), ("requirements", list)):
        assert isinstance(plugin.get(field), kind), field
    schema = plugin["configuration"]
    assert isinstance(schema["properties"], dict)
    assert isinstance(schema["required"], list)
    assert schema["additionalProperties"] is False
    jsonschema.Draft7Validator.check_schema(schema)
    assert set(schema["properties"]) == PROPERTIES
    hooks = (PLUGIN / "hooks" / "pre-command").read_text()
    for prop in PROPERTIES:
        assert f"BUILDKITE_PLUGIN_CALL_ME_{prop.upper()}" in hooks, prop
    validator = jsonschema.Draft7Validator(schema)
    for good in ({"environment": "uat"}, {"label": "staging", "ttl": 900, "timeout": 600, "client": "curl"}):
        assert not list(validator.iter_errors(good)), good
    for bad in ({}, {"environment": "uat", "label": "staging"}, {"enviroment": "uat"}, {"label": "x", "ttl": 0}):
        assert list(validator.iter_errors(bad)), bad


def _plugin_name(location: str) -> str:
    """The name the agent derives from a plugin's location (agent/plugin/plugin.go, Name()), which prefixes the
    properties' variables: BUILDKITE_PLUGIN_<NAME>_<PROPERTY>."""
    name = re.sub(r"[^a-zA-Z0-9]", "-", location.split("#")[0].rstrip("/").split("/")[-1].lower())
    return name.replace("-buildkite-plugin-git", "").replace("-buildkite-plugin", "").upper().replace("-", "_")


def test_readme_pipeline_is_valid_and_names_the_plugin_call_me(tmp_path: Path) -> None:
    yaml = import_tool("yaml")
    jsonschema = import_tool("jsonschema")
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Buildkite\n")
    opening = readme.index("```yaml\n", start) + len("```yaml\n")
    block = readme[opening : readme.index("```\n", opening)]
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(block)
    result = subprocess.run(
        [str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.buildkite", str(pipeline)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [step] = yaml.safe_load(block)["steps"]
    [(location, config)] = step["plugins"][0].items()
    assert _plugin_name(location) == "CALL_ME", location
    assert location.split("#")[0].endswith("/" + PLUGIN.name)  # the folder in this repository
    assert _plugin_name("./" + PLUGIN.name) == "CALL_ME"  # vendored, as the README says
    schema = yaml.safe_load((PLUGIN / "plugin.yml").read_text())["configuration"]
    assert not list(jsonschema.Draft7Validator(schema).iter_errors(config)), config
    assert "CALL_ME_API_KEY" not in json.dumps(config)
    assert "CALL_ME_API_KEY" in step["secrets"]
