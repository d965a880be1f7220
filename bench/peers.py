"""The processes a benchmark run starts: call-me itself and its peers (etcd, Redis), each on a free 127.0.0.1
port in a temporary folder, pinned to core 0, stopped at the end of the run whatever happens.

`ensure_installed()` installs missing peers from Debian's packages (`apt-get install -y`, after one
`apt-get update` when a package is not known yet). Everything here is loopback only and bounded in time.
"""

from __future__ import annotations

import base64
import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.pgserver import BIN as PG_BIN
from tests.pgserver import PostgresServer

# Debian package -> the binary it brings (PostgreSQL's are not on PATH: found where the tests find them).
PACKAGES = {
    "etcd-server": "etcd",
    "etcd-client": "etcdctl",
    "redis-server": "redis-server",
    "wrk": "wrk",
    "postgresql-15": str(PG_BIN / "pgbench"),
}
# The peer whose rows a missing package skips.
PEERS = {"etcd-server": "etcd", "redis-server": "redis", "wrk": "wrk", "postgresql-15": "postgres"}
API_KEY = "bench-admin-key"
NOFILE = 65536
SERVER_CORE = 0
GENERATOR_CORE = 1
CALLME_DURABILITY = "SQLite WAL, synchronous=FULL: fsync before every 2xx"


def missing_packages() -> list[str]:
    return [package for package, binary in PACKAGES.items() if shutil.which(binary) is None]


def ensure_installed(log: list[str]) -> list[str]:
    """Install what is missing; returns the packages still missing (and why, in `log`)."""
    missing = missing_packages()
    if not missing:
        return []
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log.append(f"cannot install {' '.join(missing)}: needs root and apt-get")
        return missing
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(command, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            log.append(f"apt-get install {' '.join(missing)} failed: {done.stderr.strip()[-300:]}")
    # The Debian packages start their services where an init system runs; the bench starts its own.
    for service in ("redis-server", "etcd", "postgresql"):
        if shutil.which("systemctl"):
            subprocess.run(["systemctl", "stop", service], capture_output=True, timeout=30)
    return missing_packages()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Decided once, before pin_self() narrows this process to one core.
_PINNING = shutil.which("taskset") is not None and {SERVER_CORE, GENERATOR_CORE} <= os.sched_getaffinity(0)


def pinning_available() -> bool:
    return _PINNING


def pin(core: int) -> list[str]:
    """The prefix that runs a command on one core (nothing when the machine is not the 2-core one planned for)."""
    return ["taskset", "-c", str(core)] if pinning_available() else []


def pin_self() -> None:
    """The generator (this process) runs on core 1, the servers on core 0."""
    if pinning_available():
        os.sched_setaffinity(0, {GENERATOR_CORE})


def raise_nofile(limit: int = NOFILE) -> int:
    """Raise this process's open-file limit as far as allowed; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit), max(hard, limit)))
    except (ValueError, OSError):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Proc:
    """One process started by the run, with its log in its temp folder."""

    name: str
    command: list[str]
    env: dict[str, str]
    workdir: Path
    port: int
    durability: str
    popen: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=raise_nofile,  # only raises the child's open-file limit
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


class Processes:
    """Everything the run started, in a temp folder of its own; `close()` stops them all and removes the folder."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="callme-bench-"))
        self.procs: list[Proc] = []
        self.clusters: list[PostgresServer] = []

    def folder(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))
        path.chmod(0o755)
        return path

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                print(f"bench: stopping {proc.name}: {exc}", file=sys.stderr)
        self.procs.clear()
        for cluster in self.clusters:
            cluster.cleanup()  # stops it (fast shutdown) and removes its folder
        self.clusters.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- call-me -------------------------------------------------------------------------------------

    def callme(
        self,
        *,
        database: Path | str | None = None,
        env: dict[str, str] | None = None,
        start: bool = True,
        durability: str = CALLME_DURABILITY,
    ) -> Proc:
        workdir = self.folder("callme")
        port = free_port()
        server = Path(sys.executable).parent / "call-me-server"
        full_env = dict(os.environ)
        for name in list(full_env):
            if name.startswith("CALL_ME_"):
                del full_env[name]
        full_env.update(
            {
                "PORT": str(port),
                "API_KEY": API_KEY,
                "CALL_ME_HOST": "127.0.0.1",
                "CALL_ME_DATABASE": str(database or workdir / "call-me.db"),
            }
        )
        full_env.update(env or {})
        proc = Proc(
            "call-me",
            [*pin(SERVER_CORE), str(server)],
            full_env,
            workdir,
            port,
            durability,
        )
        proc.extra["database"] = full_env["CALL_ME_DATABASE"]
        if start:
            self.add(proc.start())
            wait_http(proc, "/readyz")
        return proc

    # -- PostgreSQL ----------------------------------------------------------------------------------

    def postgres(self) -> PostgresServer:
        """A durable throwaway PostgreSQL cluster on core 0 (tests/pgserver.py), removed by `close()`."""
        cluster = PostgresServer(durable=True, launcher=pin(SERVER_CORE), external=False)
        self.clusters.append(cluster)
        cluster.start()
        return cluster

    # -- etcd ----------------------------------------------------------------------------------------

    def etcd(self) -> Proc:
        workdir = self.folder("etcd")
        port, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
        command = [
            *pin(SERVER_CORE),
            "etcd",
            "--name=bench",
            f"--data-dir={workdir / 'data'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=bench={peer_url}",
            "--log-level=warn",
        ]
        proc = self.add(
            Proc("etcd", command, dict(os.environ), workdir, port, "raft WAL fsync per commit batch (defaults)")
        )
        proc.start()
        wait_http(proc, "/health")
        return proc

    # -- Redis ---------------------------------------------------------------------------------------

    def redis(self) -> Proc:
        workdir = self.folder("redis")
        port = free_port()
        command = [
            *pin(SERVER_CORE),
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
            "--maxclients",
            "10000",
        ]
        durability = "AOF appendfsync always: fsync per event-loop batch before replying"
        proc = self.add(Proc("redis", command, dict(os.environ), workdir, port, durability))
        proc.start()
        wait_tcp(proc)
        return proc


def wait_http(proc: Proc, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log()}")
        try:
            if httpx.get(f"http://127.0.0.1:{proc.port}{path}", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not become ready:\n{proc.log()}")


def wait_tcp(proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log()}")
        try:
            with socket.create_connection(("127.0.0.1", proc.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not become ready:\n{proc.log()}")


def b64(text: str | bytes) -> str:
    return base64.b64encode(text if isinstance(text, bytes) else text.encode()).decode()
