"""A real single-node Slurm for the tests, started as root from the Debian packages `slurm-wlm`
and `munge` (installed with apt-get when missing): munged on its own socket and key, slurmctld and
slurmd on ports 26817/26818, all files in one temp folder; stopped by pid at the end. Skipped, with
the reason, where it cannot start (not root, no apt-get, install failed). cluster/slurm/README.md
describes the same set-up by hand."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch")


def install_slurm() -> str | None:
    """None when Slurm's programs are on PATH (installing them if needed), else why not."""
    if all(shutil.which(program) for program in DAEMONS):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "Slurm is not installed and cannot be (needs root and apt-get: apt-get install slurm-wlm munge)"
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            return f"{' '.join(command)} failed: {result.stderr.strip()[-300:]}"
    return None


def slurm_conf(folder: Path, host: str, cpus: int) -> str:
    return f"""ClusterName=vcelltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort=26817
SlurmdPort=26818
AuthType=auth/munge
AuthInfo=socket={folder}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def stop_daemons(folder: Path) -> None:
    for name in ("slurmd", "slurmctld", "munged"):
        pid_file = folder / f"{name}.pid"
        if pid_file.is_file():
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
    time.sleep(1)


@pytest.fixture(scope="session")
def slurm():
    """The environment (SLURM_CONF) of a running one-node Slurm with a partition `test`."""
    reason = install_slurm()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="vsl", dir="/tmp"))
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]
    cpus = len(os.sched_getaffinity(0))
    (folder / "slurm.conf").write_text(slurm_conf(folder, host, cpus))
    environment = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    try:
        subprocess.run(["munged", "--force", f"--socket={folder}/munge.sock", f"--key-file={key}",
                        f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
                        f"--seed-file={folder}/munged.seed"], check=True, capture_output=True)
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon, "-f", str(folder / "slurm.conf")], env=environment, check=True, capture_output=True)
        deadline = time.monotonic() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=environment, capture_output=True,
                                           text=True).stdout:
            if time.monotonic() > deadline:
                logs = "".join((folder / f"{d}.log").read_text()[-1500:] for d in ("slurmctld", "slurmd")
                               if (folder / f"{d}.log").is_file())
                pytest.fail(f"Slurm did not become idle within 60 s:\n{logs}")
            time.sleep(1)
        yield environment
    except subprocess.CalledProcessError as error:
        pytest.skip(f"Slurm could not start here: {' '.join(error.cmd[:1])}: {error.stderr.decode()[-300:]}")
    finally:
        stop_daemons(folder)
