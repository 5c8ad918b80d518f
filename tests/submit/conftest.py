"""A real Ray head for the `vcell submit --target ray` tests: `ray start --head --block` on 127.0.0.1
with token authentication and the Jobs API on, its own temp dir and ports (26300-26399, clear of a
default Ray), started in its own process group so teardown ends exactly its processes (`ray stop`
would end every Ray on the machine)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.submit.slurm import slurm  # noqa: F401  (a session fixture: a real one-node Slurm)

BIN = Path(sys.executable).parent
PORTS = {"--port": 26310, "--dashboard-port": 26300, "--ray-client-server-port": 26301,
         "--dashboard-agent-listen-port": 26302, "--dashboard-agent-grpc-port": 26303, "--metrics-export-port": 26304,
         "--runtime-env-agent-port": 26305, "--node-manager-port": 26306, "--object-manager-port": 26307,
         "--min-worker-port": 26320, "--max-worker-port": 26399}


@dataclass(frozen=True)
class RayHead:
    address: str  # the Jobs API, http://127.0.0.1:<dashboard port>
    token: str
    temp_dir: Path

    def environment(self, token: str | None = None) -> dict[str, str]:
        """What a client of this cluster runs with: the token in RAY_AUTH_TOKEN, nothing else of Ray's."""
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        environment["RAY_AUTH_TOKEN"] = self.token if token is None else token
        environment["PATH"] = f"{BIN}{os.pathsep}{environment['PATH']}"
        return environment


def wait_for_jobs_api(address: str, token: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}")
        try:
            reply = requests.get(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=5)
            if reply.status_code == 200:
                return
        except requests.exceptions.ConnectionError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"the Jobs API at {address} did not answer within {timeout:.0f} s")


def end_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the head's process group (ray start, GCS, raylet, dashboard, workers), SIGKILL after 10 s."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sent)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; members may linger a moment
        time.sleep(2)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def ray_head():
    token = secrets.token_hex(32)
    temp_dir = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    environment = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                   "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # the node takes 127.0.0.1, not the LAN address
                   "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    command = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--num-cpus", "2",
               "--temp-dir", str(temp_dir), "--disable-usage-stats",
               *[str(part) for option, port in PORTS.items() for part in (option, port)]]
    log = open(temp_dir / "ray-start.log", "w")
    process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{PORTS['--dashboard-port']}"
    try:
        wait_for_jobs_api(address, token, process)
        yield RayHead(address, token, temp_dir)
    except RuntimeError as error:
        log.flush()
        raise RuntimeError(f"{error}:\n{(temp_dir / 'ray-start.log').read_text()[-3000:]}") from None
    finally:
        end_process_group(process)
        log.close()
