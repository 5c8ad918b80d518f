"""A two-node Ray cluster on this machine that loses a node mid-run: the driver of the elastic test.

    python -m tests.train.elastic_cluster ATLAS STORAGE     # prints {"metrics": ..., "node_removed": ...}

The head node has 1 CPU and a second node 2. An elastic run (scaling.min_workers=1, workers=3)
starts on 3 workers; once its checkpoint of step 4 is complete the second node is removed (the
workers on it die with it), and Ray Train restarts the run on the 1 worker the cluster still has
room for, which resumes from the newest checkpoint with the rest of the epoch re-planned.

Its own process: the test session's Ray cluster is already connected in pytest's, and a driver
connects to one cluster only. RAY_TMPDIR (set by the test) keeps this cluster's address file and
sockets out of /tmp/ray, where `ray.init()` elsewhere on the machine would find them.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from tests.train.conftest import run_config
from vcell.train.ray_train import train
from vcell.train.run import run_directory


def remove_after(manifest: Path, cluster: Cluster, node, removed: threading.Event) -> None:
    while not manifest.exists():
        time.sleep(0.05)
    cluster.remove_node(node)
    removed.set()


def main(atlas: str, storage: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                           "include_dashboard": False})
    node = cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    cluster.connect()
    config = run_config(atlas, storage, "elastic-nodes", "scaling.min_workers=1", "scaling.workers=3",
                        "scaling.max_failures=3", "train.steps=16")
    removed = threading.Event()
    manifest = run_directory(config) / "checkpoints" / "step-00000004" / "manifest.json"
    threading.Thread(target=remove_after, args=(manifest, cluster, node, removed), daemon=True).start()
    try:
        metrics = train(config)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps({"metrics": metrics, "node_removed": removed.is_set()}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
