"""A throwaway Ray cluster on loopback for tests: a head and worker nodes, each a `ray start --block`
in a process group of its own, with the cluster's own temp dir.

Stopping it kills those process groups only. `ray stop --force` would kill every Ray process on
the machine, a user's own cluster or another test run's included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

from tests.processes import alive_with


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LoopbackCluster:
    gcs_address: str
    dashboard: str  # http://127.0.0.1:PORT, what `ray job submit --address` takes
    temp_dir: str
    env: dict[str, str] = field(repr=False)
    sessions: list[int] = field(default_factory=list, repr=False)  # one per node: its `ray start`'s pid

    def processes(self, title: str) -> list[psutil.Process]:
        """This cluster's live processes whose command line contains `title` (e.g. `ray::ingest_shard`)."""
        return alive_with(title, self.sessions)


@contextmanager
def loopback_cluster(nodes: int = 2, cpus_per_node: int = 1) -> Iterator[LoopbackCluster]:
    # A short temp dir: Ray's unix sockets live under it and their paths are capped at 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    port, dashboard_port = free_port(), free_port()
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    common = ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}", "--disable-usage-stats"]
    head = [
        "ray",
        "start",
        "--head",
        f"--port={port}",
        f"--temp-dir={temp_dir}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        "--include-dashboard=true",
        f"--ray-client-server-port={free_port()}",
        *common,
        *_agent_ports(),
    ]
    started = [_start(head, env)]
    cluster = LoopbackCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", temp_dir, env)
    cluster.sessions.append(started[0].pid)
    try:
        _wait_for(f"{cluster.dashboard}/api/version", started[0])
        for _ in range(nodes - 1):
            node = ["ray", "start", f"--address={cluster.gcs_address}", *common, *_agent_ports()]
            started.append(_start(node, env))
            cluster.sessions.append(started[-1].pid)
        _wait_for_nodes(cluster, nodes, started)
        _wait_for_job_agent(cluster)
        yield cluster
    finally:
        for proc in reversed(started):
            _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _agent_ports() -> list[str]:
    """Free ports for a node's agents. Their defaults are fixed (the job agent's is 52365), so a second
    node on this machine, of this cluster or another test's, found them taken: its job agent never
    registered and `ray job submit` answered "No available agent" until it gave up."""
    flags = (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    )
    return [f"--{flag}={free_port()}" for flag in flags]


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


def _wait_for_nodes(
    cluster: LoopbackCluster, nodes: int, started: list[subprocess.Popen], seconds: float = 120
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in started):
            raise RuntimeError("a ray start exited early")
        try:
            with urllib.request.urlopen(f"{cluster.dashboard}/api/v0/nodes", timeout=5) as answer:
                alive = json.loads(answer.read())["data"]["result"]["result"]
            alive = sum(node["state"] == "ALIVE" for node in alive)
        except (OSError, KeyError, ValueError):
            alive = 0
        if alive >= nodes:
            return
        time.sleep(1)
    raise TimeoutError(f"{nodes} Ray nodes did not join in {seconds} s")


def _wait_for_job_agent(cluster: LoopbackCluster, seconds: float = 120) -> None:
    """Submit a job that does nothing until the cluster takes one: the dashboard answers, and the
    nodes are alive, a few seconds before the head's job agent registers, and a `ray job submit`
    in between fails with "No available agent to submit job"."""
    command = ["ray", "job", "submit", f"--address={cluster.dashboard}", "--", "python", "-c", "pass"]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done = subprocess.run(command, env=cluster.env, capture_output=True, text=True)
        if done.returncode == 0:
            return
        if "No available agent" not in done.stdout + done.stderr:
            raise RuntimeError(f"ray job submit failed: {(done.stdout + done.stderr)[-2000:]}")
        time.sleep(1)
    raise TimeoutError(f"the cluster's job agent did not register in {seconds} s")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the node's process group (ray start --block stops its raylet and workers), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            time.sleep(1)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything of the group still alive after ray start exited
