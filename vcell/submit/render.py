"""`vcell submit --target slurm|kuberay`: render a template of cluster/, then submit it.

    script = render_slurm(job, SlurmOptions(nodes=2, gpus_per_node=4))      # an sbatch script
    documents = render_kuberay(job, KubeRayOptions(namespace="ml"))       # [ConfigMap, RayJob]

Slurm: `sbatch` takes the script on stdin and prints the job id. KubeRay: `kubectl apply` takes the
manifests when kubectl is on PATH; otherwise (or with --out) they are written to a file and the
command to apply them is printed. `--dry-run` prints either and submits nothing. The templates are
the files in cluster/ (the installed copy in a wheel), so edits there change what is submitted.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from vcell.errors import VCellError
from vcell.files import shipped_folder
from vcell.submit.job import ClusterJob, Reach, check_fits, check_paths

PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
HEREDOC_END = "VCELL_CONFIG"
RAY_VERSION = "2.60.0"  # what the image and the templates are written for (the Dockerfile's base)


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    nodes: int = 1
    cpus_per_node: int | None = None
    gpus_per_node: int = 0
    partition: str | None = None
    time: str = "04:00:00"
    exclusive: bool = False
    python: str = "python"
    port_range: tuple[int, int] = (20000, 59999)


@dataclasses.dataclass(frozen=True)
class KubeRayOptions:
    nodes: int = 1
    cpus_per_node: int = 8
    gpus_per_node: int = 0
    memory_per_node: str = "32Gi"
    namespace: str = "default"
    image: str = "vcell:0.1.0"
    claim: str = "vcell-data"
    mount_path: str = "/mnt/vcell"


def fill(text: str, values: dict[str, str], source: Path) -> str:
    """Replace every {{key}}; a key without a value is an error naming the template."""
    missing = sorted(set(PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise VCellError(f"{source}: no value for {', '.join('{{' + m + '}}' for m in missing)}",
                         hint="the template names a value vcell does not provide: restore it from the repository")
    return PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), text)


def render_slurm(job: ClusterJob, options: SlurmOptions) -> str:
    template = shipped_folder("cluster") / "slurm" / "vcell.sbatch"
    config = job.config_text()
    if HEREDOC_END in config.splitlines():
        raise VCellError(f"the config holds a line '{HEREDOC_END}', which ends the script's embedded config early")
    low, high = options.port_range
    if low < 1024 or high > 65535 or high - low + 1 < 200:
        raise VCellError(f"--port-range {low}-{high}: needs at least 200 ports between 1024 and 65535")
    sbatch = [f"#SBATCH --partition={options.partition}" if options.partition else None,
              f"#SBATCH --cpus-per-task={options.cpus_per_node}" if options.cpus_per_node else None,
              f"#SBATCH --gpus-per-node={options.gpus_per_node}" if options.gpus_per_node else None,
              "#SBATCH --exclusive" if options.exclusive else None]
    values = {
        "command": job.command, "job_name": f"vcell-{job.name}", "nodes": str(options.nodes), "time": options.time,
        "log_file": f"vcell-{job.name}-%j.out", "sbatch_options": "\n".join(line for line in sbatch if line),
        "python": shlex.quote(options.python), "launcher": "symmetric" if options.exclusive else "classic",
        "port_min": str(low), "port_blocks": str((high - low + 1) // 200), "config_yaml": config,
        "entrypoint": job.entrypoint(options.python, config_path=None, address=None),
    }
    return fill(template.read_text(), values, template)


def submit_slurm(job: ClusterJob, options: SlurmOptions, dry_run: bool, out: str | None) -> None:
    check_paths(job, Reach.MOUNTED)
    check_fits(job, options.nodes, options.cpus_per_node, options.gpus_per_node)
    script = render_slurm(job, options)
    if out:
        Path(out).write_text(script)
        print(f"wrote {out}")
    if dry_run:
        print(script, end="")
        return
    if shutil.which("sbatch") is None:
        raise VCellError("sbatch is not on PATH: this machine cannot submit to Slurm",
                         hint="run vcell submit on a login node, or --dry-run --out job.sbatch and sbatch it there")
    result = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True)
    if result.returncode != 0:
        raise VCellError(f"sbatch refused the job: {result.stderr.strip()}", hint="check --partition, --nodes, "
                         "--gpus-per-node and --time against `sinfo`; --dry-run prints the script")
    print(f"submitted Slurm job {result.stdout.strip().split(';')[0]} ({job.command} '{job.name}')")


def substitute(node, values: dict):
    """The template tree with every string "{{key}}" replaced by values[key] (typed, not text)."""
    if isinstance(node, dict):
        return {key: substitute(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [substitute(value, values) for value in node]
    if isinstance(node, str) and (match := PLACEHOLDER.fullmatch(node)):
        return values[match.group(1)]
    return node


def render_kuberay(job: ClusterJob, options: KubeRayOptions) -> list[dict]:
    """[ConfigMap with the resolved config, RayJob] for `kubectl apply`."""
    template = shipped_folder("cluster") / "kuberay" / "rayjob.yaml"
    text = template.read_text()
    config_map = f"{job.name}-config"
    values = {"name": job.name, "namespace": options.namespace, "ray_version": RAY_VERSION, "image": options.image,
              "mount_path": options.mount_path, "claim": options.claim, "config_map": config_map,
              "nodes": options.nodes, "cpus_per_node": str(options.cpus_per_node),
              "memory_per_node": options.memory_per_node, "gpus_per_node": str(options.gpus_per_node),
              "entrypoint": job.entrypoint("python", config_path="/etc/vcell/config.yaml", address="auto")}
    fill(text, values, template)  # every placeholder of the template has a value
    rayjob = substitute(yaml.safe_load(text), values)
    group = "gpu" if options.gpus_per_node else "cpu"
    specs = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"] = [spec for spec in specs if spec["groupName"] == group]
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": config_map, "namespace": options.namespace,
                           "labels": {"app.kubernetes.io/name": "vcell"}},
              "data": {"config.yaml": job.config_text()}}
    return [config, rayjob]


class ManifestDumper(yaml.SafeDumper):
    """safe_dump with multi-line strings (the embedded config) as readable literal blocks."""


ManifestDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def manifest_text(documents: list[dict]) -> str:
    return yaml.dump_all(documents, Dumper=ManifestDumper, sort_keys=False)


def submit_kuberay(job: ClusterJob, options: KubeRayOptions, shared_roots: tuple[str, ...], dry_run: bool,
                   out: str | None) -> None:
    check_paths(job, Reach.SHARED, (options.mount_path, *shared_roots))
    check_fits(job, options.nodes, options.cpus_per_node, options.gpus_per_node)
    manifest = manifest_text(render_kuberay(job, options))
    if dry_run:
        print(manifest, end="")
        return
    path = Path(out or f"{job.name}.rayjob.yaml")
    path.write_text(manifest)
    apply = f"kubectl apply -f {shlex.quote(str(path))}"
    if out or shutil.which("kubectl") is None:
        print(f"wrote {path}; submit it with: {apply}" + ("" if out else " (kubectl is not on PATH here)"))
        return
    result = subprocess.run(["kubectl", "apply", "-f", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise VCellError(f"kubectl apply failed: {result.stderr.strip()[:500]}",
                         hint=f"the manifest is in {path}; check your kube context (kubectl config current-context) "
                         f"and that KubeRay's CRDs are installed, then run: {apply}")
    print(result.stdout.strip())
    print(f"follow it with: kubectl get rayjob {job.name} -n {options.namespace} -w")


def submit_rendered(target: str, job: ClusterJob, options: dict) -> None:
    """The CLI's entry: options are its parsed arguments (argparse's dict)."""
    if target == "slurm":
        low, _, high = (options.get("port_range") or "20000-59999").partition("-")
        if not (low.isdigit() and high.isdigit()):
            raise VCellError(f"--port-range {options.get('port_range')}: write it as LOW-HIGH, e.g. 20000-59999")
        slurm = SlurmOptions(nodes=options["nodes"], cpus_per_node=options["cpus_per_node"],
                             gpus_per_node=options["gpus_per_node"], partition=options["partition"],
                             time=options["time"], exclusive=options["exclusive"], python=options["python"],
                             port_range=(int(low), int(high)))
        return submit_slurm(job, slurm, options["dry_run"], options["out"])
    kuberay = KubeRayOptions(nodes=options["nodes"], cpus_per_node=options["cpus_per_node"] or 8,
                             gpus_per_node=options["gpus_per_node"], namespace=options["namespace"],
                             image=options["image"] or KubeRayOptions.image)
    submit_kuberay(job, kuberay, tuple(options["shared_root"]), options["dry_run"], options["out"])

