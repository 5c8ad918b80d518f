"""A real Ray head for the `vcell submit --target ray` tests: `ray start --head --block` on 127.0.0.1
with token authentication and the Jobs API on, its own temp dir and ports (26300-26399, clear of a
default Ray), started in its own process group so teardown ends exactly its processes (`ray stop`
would end every Ray on the machine; tests/raynode.py)."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.raynode import BIN, node_ports, ray_environment, start_ray_node
from tests.submit.slurm import slurm  # noqa: F401  (a session fixture: a real one-node Slurm)

PORTS = node_ports(26300, head=True, size=100)


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


@pytest.fixture(scope="session")
def ray_head():
    token = secrets.token_hex(32)
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: a one-node cluster that takes 127.0.0.1, never the LAN address
    environment = ray_environment(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    node = start_ray_node(PORTS, ["--head", "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
                                  "--num-cpus", "2"], environment)
    address = f"http://127.0.0.1:{PORTS['--dashboard-port']}"
    try:
        wait_for_jobs_api(address, token, node.process)
        yield RayHead(address, token, node.temp_dir)
    except RuntimeError as error:
        raise RuntimeError(f"{error}:\n{node.log()[-3000:]}") from None
    finally:
        node.end()
