"""How long the GitHub Action takes to start, built from the Dockerfile or run from the prebuilt image.

A Docker action whose action.yml says `image: Dockerfile` is built on the runner at every job: a GitHub-hosted
runner starts empty, so nothing of an earlier job's build is cached. The release commit's action.yml says
`image: docker://ghcr.io/OWNER/call-me@sha256:...` (scripts/action-image): the runner pulls the image and runs
it. Either way the step then runs the `main` entry point, which acquires a slot.

Method (podman stands in for Docker, with the base image scripts/podman-setup made; needs `. .tools/podman/env`):
- Dockerfile: `podman build --no-cache` of this checkout (pip installs the dependencies from the package index,
  as on a runner), then the main step in the image just built, against a real server on the host, until it has
  its lease: the wall time of both. The base image is local here; on a runner its pull comes on top (the
  python:3.11-slim image, about 45 MB compressed) and is the same in both ways.
- Prebuilt: the main step in the image, already in the local store: the wall time until it has its lease. The
  pull of the image on a runner comes on top; no registry is reachable here, so it is not measured: the script
  prints the image's compressed size (`podman save | gzip`), the amount a runner downloads (less the layers of the
  base image it may have).
N rounds of each, interleaved; medians. Run: .venv/bin/python bench/action_start.py [N]   (N=3: about 5 minutes)
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-admin-key-0123456789"


def podman(*args: str, timeout: float = 900) -> str:
    got = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if got.returncode != 0:
        raise SystemExit(f"podman {args[0]} failed: {got.stderr.strip()[-2000:]}")
    return got.stdout.strip()


def build(no_cache: bool, tag: str) -> str:
    base = os.environ.get("CALL_ME_BASE_IMAGE")
    with tempfile.TemporaryDirectory() as tmp:
        iid = Path(tmp) / "iid"
        podman(
            "build", "--network=host", "--pull=never", *(["--no-cache"] if no_cache else []),
            "--iidfile", str(iid), "--tag", tag, *(["--build-arg", f"BASE_IMAGE={base}"] if base else []), str(ROOT),
        )  # fmt: skip
        return iid.read_text().strip().removeprefix("sha256:")


def main_step(image: str, url: str) -> None:
    """The Action's main entry point as the runner runs it, until it holds its lease (it then exits)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / name for name in ("output", "state", "summary")}
        for path in files.values():
            path.touch()
        env = {
            "INPUT_URL": url, "INPUT_API-KEY": KEY, "INPUT_ENVIRONMENT": "bench", "INPUT_TTL": "60",
            "GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "bench/app", "GITHUB_RUN_ID": "1", "GITHUB_JOB": "b",
            "GITHUB_OUTPUT": "/files/output", "GITHUB_STATE": "/files/state", "GITHUB_STEP_SUMMARY": "/files/summary",
        }  # fmt: skip
        options = [o for name in env for o in ("-e", name)]
        action = subprocess.run(
            ["podman", "run", "--rm", "--network=host", "--pull=never", "-v", f"{tmp}:/files", *options,
             "--entrypoint", "call-me-action-main", image],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if action.returncode != 0 or "lease-id" not in files["output"].read_text():
            raise SystemExit(f"the main step failed: {action.stdout}{action.stderr}")
    with httpx.Client(base_url=url, headers={"X-API-KEY": KEY}) as http:
        for lease in http.get("/v1/environments/bench").json()["leases"]:
            http.delete(f"/v1/leases/{lease['id']}", params={"force": "true"})


def compressed_size(image: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "image.tar"
        podman("save", "--output", str(archive), image)
        with archive.open("rb") as raw, gzip.open(Path(tmp) / "image.tar.gz", "wb", compresslevel=6) as packed:
            shutil.copyfileobj(raw, packed)
        return (Path(tmp) / "image.tar.gz").stat().st_size


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    if shutil.which("podman") is None:
        raise SystemExit("podman is missing: run scripts/podman-setup, then . .tools/podman/env")
    port = 18000 + os.getpid() % 1000
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [sys.executable, "-m", "callme.server.main"],
            env={**os.environ, "API_KEY": KEY, "PORT": str(port), "CALL_ME_HOST": "127.0.0.1",
                 "CALL_ME_DATABASE": f"{data}/call-me.db"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            prebuilt = build(False, "localhost/call-me:bench-prebuilt")
            dockerfile: list[float] = []
            ready: list[float] = []
            for _ in range(rounds):
                started = time.perf_counter()
                fresh = build(True, "localhost/call-me:bench-dockerfile")
                main_step(fresh, url)
                dockerfile.append(time.perf_counter() - started)
                started = time.perf_counter()
                main_step(prebuilt, url)
                ready.append(time.perf_counter() - started)
            size = compressed_size(prebuilt)
        finally:
            server.terminate()
            server.wait(30)
    result = {
        "dockerfile_s": round(statistics.median(dockerfile), 2),
        "prebuilt_s": round(statistics.median(ready), 2),
        "prebuilt_image_gzip_mb": round(size / 1e6, 1),
        "rounds": rounds,
    }
    print(f"Action start, build from Dockerfile (no cache) + main step: {result['dockerfile_s']} s (median)")
    print(f"Action start, prebuilt image present + main step:            {result['prebuilt_s']} s (median)")
    print(f"  + the pull of the prebuilt image on a runner: {result['prebuilt_image_gzip_mb']} MB gzip (not measured)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
