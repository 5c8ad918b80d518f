"""Multi-node on one machine: a head and two worker nodes on loopback addresses of their own (each
`ray start` in its own session, tests/raynode.py), a 2-worker DDP run spread over the two worker
nodes, and one worker node's raylet killed mid-run. Ray marks the node dead, Ray Train's failure
policy restarts the worker group on what is left (SPREAD places both workers on the surviving
node), the run resumes from its last checkpoint and ends with every cell once per epoch and the
weights of an uninterrupted run.

The driver is `vcell train` in a subprocess: it joins the cluster through `scaling.address`, as a
user's would, and this test process stays connected to the session's own local Ray.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil
import pytest

from tests.raynode import RayNode, end_nodes, node_ports, ray_environment, start_ray_node, wait_for_log
from tests.train.conftest import audit_after_one_resume, run_config, run_overrides, weight_differences
from vcell.config import load_config
from vcell.errors import VCellError
from vcell.train.run import config_hash, run_directory

# (loopback address, port block): ports clear of a default Ray and of tests/submit (26300-26399)
HEAD, NODE_A, NODE_B = ("127.0.0.2", 26400), ("127.0.0.3", 26440), ("127.0.0.4", 26480)
# the GCS declares a node dead after 3 missed health checks 0.5 s apart (default: 5 x 3 s)
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                   "RAY_health_check_failure_threshold": "3"}
STARTED = "Ray runtime started."


@dataclass
class Cluster:
    head: RayNode
    workers: tuple[RayNode, RayNode]
    environment: dict[str, str]  # what a client of the cluster runs with (token included)


def start_cluster(environment: dict[str, str]) -> list[RayNode]:
    """Head, node A, node B, each started once the one before it runs; on failure none is left running."""
    head = start_ray_node(node_ports(HEAD[1], head=True), ["--head", "--num-cpus", "0", "--include-dashboard", "false"],
                          environment, HEAD[0])
    nodes = [head]
    try:
        wait_for_log(head, STARTED)
        nodes += [start_ray_node(node_ports(base), ["--address", head.gcs_address, "--num-cpus", "2"], environment, ip)
                  for ip, base in (NODE_A, NODE_B)]
        for node in nodes[1:]:
            wait_for_log(node, STARTED)
    except RuntimeError:
        end_nodes(nodes)
        raise
    return nodes


@pytest.fixture
def cluster():
    """A head without CPUs (only the driver's Train controller lives there) and two worker nodes with
    2 CPUs each, token authentication on; every process of the three ended afterwards. A second try
    when a node does not start: Ray gives a raylet 30 s to register, which a busy machine can miss."""
    environment = ray_environment(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), **FAST_NODE_DEATH)
    try:
        nodes = start_cluster(environment)
    except RuntimeError:
        try:
            nodes = start_cluster(environment)
        except RuntimeError as error:
            pytest.skip(f"Ray cannot start a multi-node cluster here: {error}")
    yield Cluster(nodes[0], (nodes[1], nodes[2]), environment)
    end_nodes(nodes)


def train_workers(node: RayNode) -> set[int]:
    """pids of the Ray Train workers running on `node` (its raylet starts them in its session)."""
    found = set()
    for process in node.processes():
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                found.add(process.pid)
        except psutil.Error:  # ended between listing and asking
            continue
    return found


def wait_for(condition, what: str, driver: subprocess.Popen, log_path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if driver.poll() is not None:
            raise AssertionError(f"the driver ended ({driver.returncode}) before {what}:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)


def test_the_placement_is_checked_and_not_part_of_a_runs_identity():
    with pytest.raises(VCellError, match=r"scaling.placement_strategy.*'SPREAD'.*got 'spread'"):
        load_config(None, ["scaling.placement_strategy=spread"])
    spread = load_config(None, ["scaling.placement_strategy=SPREAD"])
    assert spread.scaling.placement_strategy == "SPREAD" and load_config(None).scaling.placement_strategy == "PACK"
    assert config_hash(spread) == config_hash(load_config(None))  # where workers run is not what they compute


@pytest.mark.slow
def test_a_killed_node_is_survived_with_every_cell_once_and_the_same_weights(cluster, reference, train_atlas, tmp_path):
    hold = tmp_path / "held"
    overrides = run_overrides(train_atlas, tmp_path / "runs", "multinode", f"scaling.address={cluster.head.gcs_address}",
                              "scaling.placement_strategy=SPREAD")
    # rank 1 stops after step 6 (the checkpoint of step 4 is complete) until its node or its peer's is killed
    environment = {**cluster.environment, "VCELL_FAULT_STEP": "6", "VCELL_FAULT_KIND": "hold",
                   "VCELL_FAULT_MARKER": str(hold), "VCELL_FAULT_HOLD_S": "300"}
    log_path = tmp_path / "driver.log"
    node_a, node_b = cluster.workers
    with open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "vcell.cli", "train", *overrides], env=environment,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(hold.exists, "hold at step 6", driver, log_path, timeout=300)
        first = [train_workers(node_a), train_workers(node_b)]
        assert [len(pids) for pids in first] == [1, 1], f"SPREAD: one worker on each node, found {first}"

        node_a.raylet().kill()  # SIGKILL: the node is gone, as far as the cluster can tell
        resumed: set[int] = set()  # the workers of the next attempt: both on the node left

        def resumed_on_node_b() -> bool:
            resumed.update(train_workers(node_b) - first[1])
            return len(resumed) >= 2

        wait_for(resumed_on_node_b, "two new workers on the node left", driver, log_path, timeout=300)
        assert len(resumed) == 2, resumed
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    output = log_path.read_text()
    assert driver.returncode == 0, output[-4000:]
    assert "finished: 12 steps on 2 worker(s)" in output
    assert node_a.process.poll() is not None and train_workers(node_a) == set()  # no node came back, no worker lingers

    config = run_config(train_atlas, tmp_path / "runs", "multinode")
    assert json.loads((run_directory(config) / "metrics.json").read_text())["resumed_from_step"] == 4
    assert weight_differences(reference[0], config) == []  # bitwise: resumed on one node equals uninterrupted
    # rank 1 held after step 6 and rank 0 never finished step 7: steps 5 and 6 are replayed, by both ranks again
    audit = audit_after_one_resume(config, resumed_from=4, replayed_steps={5, 6})
    assert set(audit[audit[:, 1] == 4, 0]) == {0, 1}
