"""What `vcell submit --target slurm|kuberay` renders, checked offline: KubeRay manifests (CPU and GPU
variants, the shipped RayCluster) against compact schemas of KubeRay's own CRDs (schemas/, strict:
an invented field fails), the PVC against core/v1's fields, the cluster-launcher YAML against Ray's
own ray-schema.json, and the sbatch script with `bash -n`; plus the errors that submit nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from vcell.config import load_config
from vcell.errors import VCellError
from vcell.files import shipped_folder
from vcell.submit.job import ClusterJob, Reach, check_paths
from vcell.submit.render import KubeRayOptions, SlurmOptions, manifest_text, render_kuberay, render_slurm

SCHEMAS = Path(__file__).parent / "schemas"
CLUSTER = shipped_folder("cluster")
PVC_SCHEMA = {  # core/v1 PersistentVolumeClaim, the fields pvc.yaml uses
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "v1"}, "kind": {"const": "PersistentVolumeClaim"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "accessModes": {"type": "array", "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany",
                                                                "ReadWriteOncePod"]}},
            "resources": {"type": "object", "properties": {"requests": {"type": "object", "required": ["storage"]}}},
            "storageClassName": {"type": "string"}}}}}


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.v1.json").read_text())


def job(atlas="/mnt/vcell/atlases/demo.zarr", storage="/mnt/vcell/runs", *overrides) -> ClusterJob:
    return ClusterJob("train", load_config(None, [f"data.atlas={atlas}", f"scaling.storage_path={storage}",
                                                  "name=submitted", *overrides]))


@pytest.mark.parametrize("gpus", [0, 4], ids=["cpu", "gpu"])
def test_rayjob_matches_kuberay_schema(gpus):
    config_map, rayjob = yaml.safe_load_all(manifest_text(render_kuberay(job(), KubeRayOptions(nodes=2, gpus_per_node=gpus))))
    jsonschema.validate(rayjob, schema("rayjobs"))
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == ("gpu" if gpus else "cpu") and group["replicas"] == 2
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    assert spec["entrypoint"] == "python -m vcell.cli train --config /etc/vcell/config.yaml --address auto --quiet"
    assert config_map["kind"] == "ConfigMap" and load_config_text(config_map["data"]["config.yaml"]).name == "submitted"
    assert "token" not in json.dumps(rayjob).replace('"mode": "token"', "")  # no token in the manifest


def load_config_text(text: str):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        handle.write(text)
        handle.flush()
        return load_config(handle.name)


def test_schema_is_strict():
    _, rayjob = render_kuberay(job(), KubeRayOptions())
    rayjob["spec"]["shutdownAfterJobFinish"] = True  # misspelt
    with pytest.raises(jsonschema.ValidationError, match="shutdownAfterJobFinish"):
        jsonschema.validate(rayjob, schema("rayjobs"))
    _, rayjob = render_kuberay(job(), KubeRayOptions())
    rayjob["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "password"
    with pytest.raises(jsonschema.ValidationError, match="password"):
        jsonschema.validate(rayjob, schema("rayjobs"))


def test_shipped_manifests_validate():
    raycluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    jsonschema.validate(raycluster, schema("rayclusters"))
    assert {g["groupName"] for g in raycluster["spec"]["workerGroupSpecs"]} == {"cpu", "gpu"}
    assert raycluster["spec"]["authOptions"]["mode"] == "token"
    jsonschema.validate(yaml.safe_load((CLUSTER / "kuberay" / "pvc.yaml").read_text()), PVC_SCHEMA)
    launcher = yaml.safe_load((CLUSTER / "ray-cluster" / "aws.yaml").read_text())
    ray_schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(launcher, ray_schema)
    for path in CLUSTER.rglob("*"):  # each file says which versions it was written for
        if path.is_file() and path.suffix in (".yaml", ".sbatch"):
            assert "Ray 2.60" in path.read_text() or "any KubeRay version" in path.read_text(), path


def test_sbatch_script(tmp_path):
    atlas = tmp_path / "atlas.zarr"
    atlas.mkdir()
    script = render_slurm(job(atlas, tmp_path / "runs", "scaling.workers=8", "scaling.gpus_per_worker=1"),
                          SlurmOptions(nodes=2, gpus_per_node=4, partition="gpu", exclusive=True))
    (tmp_path / "job.sbatch").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], check=True)
    assert "{{" not in script
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu", "#SBATCH --exclusive",
                 "LAUNCHER=symmetric", "export RAY_AUTH_MODE=token"):
        assert line in script
    embedded = script.split("<< 'VCELL_CONFIG'\n")[1].split("VCELL_CONFIG\n")[0]
    assert load_config_text(embedded).scaling.workers == 8
    shared = render_slurm(job(atlas, tmp_path / "runs"), SlurmOptions())
    assert "LAUNCHER=classic" in shared and "--exclusive" not in shared.split("set -euo")[0].split("#SBATCH")[-1]


def test_paths_the_cluster_cannot_read(tmp_path):
    with pytest.raises(VCellError, match=r"data.atlas=/home/me/a.zarr is not under /mnt/vcell"):
        check_paths(job("/home/me/a.zarr"), Reach.SHARED, ("/mnt/vcell",))
    with pytest.raises(VCellError, match=r"data.atlas=/mnt/vcell/../etc is not under"):
        check_paths(job("/mnt/vcell/../etc"), Reach.SHARED, ("/mnt/vcell",))
    with pytest.raises(VCellError, match=r"data.atlas=s3://bucket/a.zarr is a URL"):
        check_paths(job("s3://bucket/a.zarr"), Reach.SHARED, ("/mnt/vcell",))
    with pytest.raises(VCellError, match=f"data.atlas={tmp_path}/missing.zarr does not exist"):
        check_paths(job(tmp_path / "missing.zarr", tmp_path), Reach.MOUNTED)


def vcell(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vcell.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_command_line_errors_submit_nothing(tmp_path):
    unknown = vcell("submit", "--target", "nomad", "--", "train", cwd=tmp_path)
    assert unknown.returncode == 2 and "invalid choice: 'nomad'" in unknown.stderr
    laptop = vcell("submit", "--target", "kuberay", "--", "train", f"data.atlas={tmp_path}/a.zarr",
                   "scaling.storage_path=/mnt/vcell/runs", cwd=tmp_path)
    assert laptop.returncode == 2 and f"data.atlas={tmp_path}/a.zarr is not under /mnt/vcell" in laptop.stderr
    too_big = vcell("submit", "--target", "slurm", "--dry-run", "--cpus-per-node", "2", "--", "train",
                    f"data.atlas={tmp_path}", f"scaling.storage_path={tmp_path}", "scaling.workers=3", cwd=tmp_path)
    assert too_big.returncode == 2 and "scaling.workers=3" in too_big.stderr and "at most 2 worker(s)" in too_big.stderr
    wrong_job = vcell("submit", "--target", "slurm", "--", "evaluate", "runs/x", cwd=tmp_path)
    assert wrong_job.returncode == 2 and "cannot submit 'evaluate'" in wrong_job.stderr
    written = vcell("submit", "--target", "kuberay", "--out", "job.yaml", "--", "train",
                    "data.atlas=/mnt/vcell/a.zarr", "scaling.storage_path=/mnt/vcell/runs", cwd=tmp_path)
    assert written.returncode == 0 and "kubectl apply -f job.yaml" in written.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["job.yaml"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
def test_kubectl_without_a_cluster_keeps_the_manifest(tmp_path):
    environment = {**os.environ, "KUBECONFIG": str(tmp_path / "no-kubeconfig")}  # no context: nothing to reach
    result = subprocess.run([sys.executable, "-m", "vcell.cli", "submit", "--target", "kuberay", "--", "train",
                             "data.atlas=/mnt/vcell/a.zarr", "scaling.storage_path=/mnt/vcell/runs"],
                            capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=120)
    assert result.returncode == 2 and "kubectl apply failed" in result.stderr
    assert "kubectl apply -f quickstart.rayjob.yaml" in result.stderr
    documents = list(yaml.safe_load_all((tmp_path / "quickstart.rayjob.yaml").read_text()))
    jsonschema.validate(documents[1], schema("rayjobs"))
