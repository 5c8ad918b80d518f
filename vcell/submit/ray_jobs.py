"""`vcell submit --target ray`: a job on a running Ray cluster through the Ray Jobs API.

    client = connect("http://head:8265")                    # token from RAY_AUTH_TOKEN / its file
    submit_job(client, job)                                 # submission id = the run's name
    status = follow(client, job.name)                       # prints the logs; the final JobStatus

The run name is the job's `submission_id`: submitting the same run again while it is pending or
running (or after it succeeded) submits nothing and says so; after it failed or was stopped,
`resubmit=True` deletes the old record and submits again (the run resumes from its checkpoint).
The job's working folder carries the resolved config and a copy of the vcell package (so the
cluster runs this code, configs and DeepSpeed JSONs included), never the data.

The token (Ray token authentication) is read from RAY_AUTH_TOKEN, the file named by
RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token, sent as a bearer header and never written or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from vcell.errors import VCellError
from vcell.files import SHIPPED_FOLDERS, shipped_folder
from vcell.submit.job import CONFIG_FILE, ClusterJob

log = logging.getLogger(__name__)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
ACTIVE = ("PENDING", "RUNNING")


def jobs_address(address: str | None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS / RAY_ADDRESS, as an http(s) URL of the Jobs API."""
    address = address or next((os.environ[v] for v in ADDRESS_VARIABLES if os.environ.get(v)), None)
    if not address:
        raise VCellError("no Ray cluster given", hint="pass --address http://HEAD:8265 (the Jobs API of the cluster's "
                         "head) or set RAY_API_SERVER_ADDRESS")
    return address if "://" in address else f"http://{address}"


def is_loopback(address: str) -> bool:
    return urlparse(jobs_address(address)).hostname in LOOPBACK_HOSTS


def read_token() -> str | None:
    """Ray's token sources, in Ray's order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN_PATH") and not path.is_file():
        raise VCellError(f"RAY_AUTH_TOKEN_PATH={path} does not exist", hint="point it at the cluster's token file")
    return path.read_text().strip() if path.is_file() else None


def connect(address: str | None, *, insecure: bool = False):
    """A JobSubmissionClient for the cluster; a cluster that is not on loopback needs a token."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = jobs_address(address)
    token = read_token()
    if token is None and not insecure and not is_loopback(url):
        raise VCellError(f"no Ray auth token for the cluster at {url}",
                         hint="clusters run with RAY_AUTH_MODE=token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) "
                         "to the cluster's token, or pass --insecure for a cluster without authentication")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except AuthenticationError as error:
        raise auth_error(url, error) from None
    except ConnectionError:
        raise VCellError(f"cannot reach the Ray Jobs API at {url}",
                         hint="check the address (the head's dashboard port, 8265 by default) and that the "
                         "cluster runs with the dashboard (ray[default])") from None


@contextlib.contextmanager
def cluster_errors(address: str | None) -> Iterator[None]:
    """Errors of the Jobs API as VCellErrors that say what to do (a token refused, a cluster gone)."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as error:
        raise auth_error(jobs_address(address), error) from None
    except (ConnectionError, requests.exceptions.ConnectionError) as error:
        raise VCellError(f"lost the Ray Jobs API at {jobs_address(address)}: {error}") from None


def auth_error(url: str, error: Exception) -> VCellError:
    refused = "Forbidden" in str(error) or "invalid" in str(error).lower()
    what = "refused the token" if refused else "needs a token"
    return VCellError(f"the Ray cluster at {url} {what} ({str(error).splitlines()[0]})",
                      hint="set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the token the cluster was started with "
                      "(`ray get-auth-token` on the head prints it)")


def job_info(client, name: str):
    """The job's JobDetails, or None when the cluster has no job of that id."""
    try:
        return client.get_job_info(name)
    except RuntimeError as error:
        if "404" in str(error) or "does not exist" in str(error):
            return None
        raise


def require_job(client, name: str):
    info = job_info(client, name)
    if info is None:
        raise VCellError(f"the Ray cluster has no job '{name}'", hint="the job id is the run's name: check it with "
                         "`ray job list`, or submit it with vcell submit --target ray -- train ...")
    return info


def submit_job(client, job: ClusterJob, *, resubmit: bool = False, ship_code: bool = True) -> bool:
    """Submit `job` unless the same run is already there; True if a job was submitted."""
    earlier = job_info(client, job.name)
    if earlier is not None:
        status = str(earlier.status.value)
        if status in ACTIVE or status == "SUCCEEDED":
            print(f"job '{job.name}' is already {status} on the cluster: nothing submitted "
                  f"(follow it with `vcell submit logs {job.name}`)")
            return False
        if not resubmit:
            raise VCellError(f"job '{job.name}' already ran on the cluster and {status}: {earlier.message}",
                             hint="pass --resubmit to submit it again (the run resumes from its last checkpoint), "
                             "or give the run another name (--name)")
        client.delete_job(job.name)
    with tempfile.TemporaryDirectory(prefix="vcell-job-") as folder:
        working = stage_working_folder(job, Path(folder), ship_code)
        try:
            client.submit_job(entrypoint=job.entrypoint(), submission_id=job.name,
                              runtime_env={"working_dir": str(working), "env_vars": {"PYTHONUNBUFFERED": "1"}},
                              metadata={"vcell_command": job.command})
        except RuntimeError as error:  # someone submitted the same run a moment ago
            if "already exists" not in str(error):
                raise
            raise VCellError(f"job '{job.name}' was just submitted by someone else: nothing submitted",
                             hint=f"follow it with `vcell submit logs {job.name} --follow`") from None
    print(f"submitted job '{job.name}': {job.entrypoint()}")
    return True


def stage_working_folder(job: ClusterJob, folder: Path, ship_code: bool) -> Path:
    """The job's working folder: config.yaml and (ship_code) the vcell package with its configs
    inside, as a wheel installs it. `python -m vcell.cli` in the job imports this copy."""
    working = folder / "job"
    working.mkdir()
    (working / CONFIG_FILE).write_text(job.config_text())
    if ship_code:
        package = Path(__file__).resolve().parents[1]
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(package, working / "vcell", ignore=ignore)
        configs = working / "vcell" / SHIPPED_FOLDERS["configs"]
        if not configs.exists():  # a source checkout: configs/ sits beside the package
            shutil.copytree(shipped_folder("configs"), configs, ignore=ignore)
    return working


def follow(client, name: str, out=None) -> str:
    """Print the job's logs as they come until it ends; its final status (SUCCEEDED, FAILED, STOPPED)."""
    out = out or sys.stdout

    async def tail() -> None:
        async for lines in client.tail_job_logs(name):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    info = require_job(client, name)
    return str(info.status.value)


def describe(info) -> str:
    parts = [f"job '{info.submission_id}': {info.status.value}"]
    if info.message:
        parts.append(info.message)
    if info.entrypoint:
        parts.append(f"entrypoint: {info.entrypoint}")
    return "\n  ".join(parts)


def stop(client, name: str) -> bool:
    """Ask the cluster to stop the job; False when it had ended already."""
    info = require_job(client, name)
    if str(info.status.value) not in ACTIVE:
        print(f"job '{name}' is not running ({info.status.value}): nothing to stop")
        return False
    client.stop_job(name)
    print(f"stopping job '{name}'")
    return True
