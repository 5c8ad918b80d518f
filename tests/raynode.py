"""A Ray node as a subprocess, for tests that need a real cluster of their own (the Jobs API of
`vcell submit`, several nodes on one machine): `ray start ... --block` on a loopback address with
its own temp dir and a block of ports clear of a default Ray, in its own session, so that a test
can kill exactly one node's raylet and teardown ends exactly the node's processes (`ray stop`
would end every Ray on the machine, other test sessions' too).

    environment = ray_environment()
    head = start_ray_node(node_ports(26400, head=True), ["--head", "--num-cpus", "0"], environment, "127.0.0.2")
    worker = start_ray_node(node_ports(26440), ["--address", head.gcs_address, "--num-cpus", "2"], environment,
                            "127.0.0.3")
    worker.raylet().kill()          # a node's death, as the cluster sees it
    end_nodes([worker, head])  # or node.end() for one

Addresses: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (tests/conftest.py) Ray keeps 127.0.0.1 but
`ray start --address` refuses to join; with 1 it joins, but rewrites "127.0.0.1" and "localhost"
(never another loopback address) to the machine's network address. So a one-node cluster takes
127.0.0.1 with 0, and a multi-node one gives every node an address of its own from 127.0.0.2 on
with 1: loopback only, and as distinct as the hosts of a real cluster.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent


def node_ports(base: int, *, head: bool = False, size: int = 40) -> dict[str, int]:
    """`ray start` port options for a node whose ports are base .. base + size - 1: 20 fixed (a head's
    GCS is base + 10), the rest for its worker processes (one port each). Every port Ray would
    otherwise take from its defaults is named, so nodes (and other Rays) never collide."""
    ports = {"--dashboard-agent-listen-port": base + 2, "--dashboard-agent-grpc-port": base + 3,
             "--metrics-export-port": base + 4, "--runtime-env-agent-port": base + 5, "--node-manager-port": base + 6,
             "--object-manager-port": base + 7, "--min-worker-port": base + 20, "--max-worker-port": base + size - 1}
    if head:  # the dashboard process runs (minimal) even with the dashboard off: it needs a port of its own too
        ports |= {"--port": base + 10, "--dashboard-port": base, "--ray-client-server-port": base + 1}
    return ports


def ray_environment(**variables: str) -> dict[str, str]:
    """This environment with the venv's `ray` on PATH, multi-node clusters allowed (see the module
    doc) and `variables`."""
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            **variables}


@dataclass
class RayNode:
    process: subprocess.Popen  # `ray start --block`, the leader of the node's session
    temp_dir: Path
    ports: dict[str, int]
    ip: str

    @property
    def gcs_address(self) -> str:
        return f"{self.ip}:{self.ports['--port']}"

    def log(self) -> str:
        return (self.temp_dir / "ray-start.log").read_text(errors="replace")

    def processes(self) -> list:
        """The live processes of this node (psutil.Process): raylet, agents and its workers (the raylet
        puts each worker in a process group of its own, but they all stay in the node's session)."""
        return session_members(self.process.pid)

    def raylet(self):
        """The node's raylet process (psutil.Process)."""
        found = [p for p in self.processes() if p.name() == "raylet"]
        if len(found) != 1:
            raise RuntimeError(f"node in {self.temp_dir}: {len(found)} raylet processes in its session")
        return found[0]

    def end(self) -> None:
        """Ends every process of the node, then deletes its temp dir (its logs: Ray's own output of a
        driver, e.g. `ray.init(log_to_driver=True)`, is the place to keep what a failing test needs)."""
        end_nodes([self])


def start_ray_node(ports: dict[str, int], options: list[str], environment: dict[str, str],
                   ip: str = "127.0.0.1") -> RayNode:
    """`ray start --block` on `ip` with `ports` and `options` (--head or --address, resources), in a
    new session; returns at once (see `wait_for_log`)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    command = [str(BIN / "ray"), "start", "--block", "--node-ip-address", ip, "--temp-dir", str(temp_dir),
               "--disable-usage-stats", *options, *[str(part) for option, port in ports.items() for part in (option, port)]]
    with open(temp_dir / "ray-start.log", "w") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return RayNode(process, temp_dir, ports, ip)


def wait_for_log(node: RayNode, text: str, timeout: float = 120.0) -> None:
    """Until `text` appears in the node's `ray start` output ("Ray runtime started." once its raylet runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in node.log():
            return
        if node.process.poll() is not None:
            raise RuntimeError(f"ray start exited with {node.process.returncode}:\n{node.log()[-3000:]}")
        time.sleep(0.5)
    raise RuntimeError(f"ray start did not print {text!r} within {timeout:.0f} s:\n{node.log()[-3000:]}")


def session_members(session: int) -> list:
    """The live processes (psutil.Process) of the session `session` leads."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.Error):  # ended between listing and asking
            continue
    return members


def end_nodes(nodes: list[RayNode], grace: float = 3.0) -> None:
    """SIGTERM to every node's process group (ray start, GCS, raylet, agents) at once for a clean
    stop, then, after up to `grace` s for all of them together (not each: a cluster's nodes stop
    side by side), SIGKILL to everything left in their sessions (workers included); temp dirs go."""
    for node in nodes:
        try:
            os.killpg(node.process.pid, signal.SIGTERM)
        except ProcessLookupError:  # gone already
            pass
    deadline = time.monotonic() + grace
    for node in nodes:
        try:
            node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # slow to stop: killed below
            pass
    for node in nodes:
        for member in session_members(node.process.pid):
            try:
                member.kill()
            except psutil.NoSuchProcess:  # ended meanwhile
                continue
        node.process.wait()
        shutil.rmtree(node.temp_dir, ignore_errors=True)
