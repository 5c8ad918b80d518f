"""`vcell submit`: a training run or campaign as a job on a cluster; the job's status, logs, stop.

    vcell submit --target ray --address http://HEAD:8265 [--wait] [--resubmit] -- train [--config F] [k=v ...]
    vcell submit --target slurm [--nodes N] [--partition P] [--gpus-per-node G] [--dry-run] -- tune ...
    vcell submit --target kuberay [--namespace NS] [--image IMAGE] [--out FILE] -- train ...
    vcell submit status|logs|stop RUN [--address A] [--follow]          (jobs of --target ray)
"""

from __future__ import annotations

import argparse
import sys

from vcell.cli.arguments import non_negative_int, positive_int, split_overrides
from vcell.errors import VCellError

TARGETS = ("ray", "slurm", "kuberay")
ACTIONS = ("status", "logs", "stop")


def job_parser() -> argparse.ArgumentParser:
    """The words after `--`: the vcell command a cluster runs."""
    parser = argparse.ArgumentParser(prog="vcell submit ... --", add_help=False, exit_on_error=False)
    parser.add_argument("command")
    parser.add_argument("--config")
    parser.add_argument("--name")
    for passed in ("--restart", "--resume-with-changes", "--retry-errored"):
        parser.add_argument(passed, action="store_true")
    return parser


def cluster_job(words: list[str]):
    """`train|tune [--config F] [--name N] [--restart ...] [k=v ...]` -> a ClusterJob (config resolved)."""
    from vcell.cli.tune import DEFAULT_CAMPAIGN
    from vcell.config import load_config
    from vcell.submit.job import COMMANDS, ClusterJob

    if words[0] not in COMMANDS:
        raise VCellError(f"cannot submit '{words[0]}': a cluster job is one of {', '.join(COMMANDS)}",
                         hint="write the job after '--', e.g. vcell submit --target ray -- train k=v")
    plain, overrides = split_overrides(words)
    try:
        parsed, unknown = job_parser().parse_known_args(plain)
    except argparse.ArgumentError as error:
        raise VCellError(f"cannot read the job '{' '.join(words)}': {error}",
                         hint="write it as train|tune [--config F] [--name N] [k=v ...]") from None
    if unknown:
        raise VCellError(f"the job takes no {' '.join(unknown)}", hint="write it as train|tune [--config F] [--name N] "
                         "[--restart] [k=v ...]")
    config_file = parsed.config or (str(DEFAULT_CAMPAIGN) if parsed.command == "tune" else None)
    names = [f"name={parsed.name}"] if parsed.name else []
    flags = tuple(flag for flag in ("--restart", "--resume-with-changes", "--retry-errored")
                  if getattr(parsed, flag[2:].replace("-", "_")))
    return ClusterJob(parsed.command, load_config(config_file, [*names, *overrides]), flags)


def run_submit(args: argparse.Namespace) -> None:
    words = args.job[1:] if args.job[:1] == ["--"] else args.job
    if not words:
        raise VCellError("nothing to submit", hint="vcell submit --target ray|slurm|kuberay -- train [k=v ...], "
                         "or vcell submit status|logs|stop RUN")
    if words[0] in ACTIONS:
        return run_action(args, words)
    job = cluster_job(words)
    if args.target is None:
        raise VCellError("no --target given", hint=f"pick one of {', '.join(TARGETS)}")
    if args.target == "ray":
        return submit_ray(args, job)
    from vcell.submit.render import submit_rendered

    submit_rendered(args.target, job, vars(args))


def submit_ray(args: argparse.Namespace, job) -> None:
    from vcell.submit.job import Reach, check_paths
    from vcell.submit.ray_jobs import cluster_errors, connect, follow, is_loopback, jobs_address, submit_job

    reach = Reach.LOCAL if is_loopback(jobs_address(args.address)) else Reach.SHARED
    check_paths(job, reach, tuple(args.shared_root))
    with cluster_errors(args.address):
        client = connect(args.address, insecure=args.insecure)
        submit_job(client, job, resubmit=args.resubmit, ship_code=not args.use_installed)
        if args.wait:
            finish(follow(client, job.name), job.name)


def finish(status: str, name: str) -> None:
    """Exit with the job's outcome: 0 when it succeeded, 1 otherwise (the message on stderr)."""
    if status != "SUCCEEDED":
        print(f"job '{name}' {status}: see `vcell submit logs {name}`", file=sys.stderr)
        raise SystemExit(1)
    print(f"job '{name}' SUCCEEDED")


def run_action(args: argparse.Namespace, words: list[str]) -> None:
    from vcell.submit.ray_jobs import cluster_errors, connect, describe, follow, require_job, stop

    action, name = words[0], action_arguments(args, words)
    with cluster_errors(args.address):
        client = connect(args.address, insecure=args.insecure)
        if action == "status":
            print(describe(require_job(client, name)))
        elif action == "logs" and args.follow:
            finish(follow(client, name), name)
        elif action == "logs":
            require_job(client, name)
            print(client.get_job_logs(name), end="")
        else:
            stop(client, name)


def action_arguments(args: argparse.Namespace, words: list[str]) -> str:
    """`status|logs|stop RUN [--address A] [--insecure] [--follow]`: options may follow the name."""
    parser = argparse.ArgumentParser(prog=f"vcell submit {words[0]}", add_help=False, exit_on_error=False)
    parser.add_argument("name")
    parser.add_argument("--address")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--follow", action="store_true")
    try:
        parsed, unknown = parser.parse_known_args(words[1:])
    except argparse.ArgumentError as error:
        unknown, parsed = [str(error)], None
    if unknown or parsed is None:
        raise VCellError(f"vcell submit {words[0]}: cannot read {' '.join(words[1:]) or 'an empty run name'}",
                         hint=f"vcell submit {words[0]} RUN [--address http://HEAD:8265]")
    args.address = parsed.address or args.address
    args.insecure = parsed.insecure or args.insecure
    args.follow = parsed.follow or args.follow
    return parsed.name


def add_submit_parser(commands) -> None:
    parser = commands.add_parser(
        "submit", help="submit a training run or campaign to a cluster (Ray Jobs API, Slurm, KubeRay)",
        description="Submit `vcell train|tune` (written after `--`) to a cluster; the run name is the job's id, "
        "so submitting the same run again is safe. Templates: cluster/ (slurm/, kuberay/, ray-cluster/).",
        epilog="examples: vcell submit --target ray --address http://head:8265 --wait -- train data.atlas=/shared/a.zarr"
        " scaling.storage_path=/shared/runs | vcell submit status quickstart --address http://head:8265",
    )
    parser.add_argument("--target", choices=TARGETS, help="where the job runs")
    parser.add_argument("--address", help="ray: the cluster's Jobs API, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS)")
    parser.add_argument("--insecure", action="store_true", help="ray: allow a remote cluster without token auth")
    parser.add_argument("--wait", action="store_true", help="ray: print the job's logs until it ends; exit 0 only if it succeeded")
    parser.add_argument("--follow", action="store_true", help="logs: keep printing until the job ends")
    parser.add_argument("--resubmit", action="store_true", help="ray: submit again a run whose earlier job failed or was stopped")
    parser.add_argument("--use-installed", action="store_true",
                        help="ray: run the vcell installed on the cluster (default: ship this vcell with the job)")
    parser.add_argument("--shared-root", action="append", default=[], metavar="PATH",
                        help="a filesystem every node mounts (repeatable); data.atlas and scaling.storage_path must "
                        "lie under one for a remote cluster (kuberay: the volume's mount path is one)")
    parser.add_argument("--nodes", type=positive_int, default=1, help="slurm/kuberay: nodes (Ray workers' hosts)")
    parser.add_argument("--cpus-per-node", type=positive_int, help="slurm/kuberay: CPU cores per node")
    parser.add_argument("--gpus-per-node", type=non_negative_int, default=0, help="slurm/kuberay: GPUs per node")
    parser.add_argument("--partition", help="slurm: partition")
    parser.add_argument("--time", default="04:00:00", help="slurm: time limit (HH:MM:SS)")
    parser.add_argument("--exclusive", action="store_true", help="slurm: whole nodes")
    parser.add_argument("--python", default="python", help="slurm: the Python with vcell installed on the nodes")
    parser.add_argument("--port-range", default="20000-59999", metavar="LOW-HIGH",
                        help="slurm: ports each job takes a block of 200 from (by its Slurm job id)")
    parser.add_argument("--namespace", default="default", help="kuberay: Kubernetes namespace")
    parser.add_argument("--image", help="kuberay: container image (default: vcell:<version>)")
    parser.add_argument("--out", help="slurm/kuberay: write the rendered script/manifest to this file")
    parser.add_argument("--dry-run", action="store_true", help="slurm/kuberay: print what would be submitted; submit nothing")
    parser.add_argument("job", nargs=argparse.REMAINDER, metavar="-- train|tune ...",
                        help="the job: `-- train|tune [--config F] [--name N] [k=v ...]`, or `status|logs|stop RUN`")
    parser.set_defaults(handler=run_submit)
