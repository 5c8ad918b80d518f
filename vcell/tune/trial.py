"""One trial of a campaign: a whole vcell training run (Ray Train, its own workers) inside Ray Tune.

    run_trial({"train.learning_rate": 3e-4}, setup)   # Ray Tune calls it; see vcell.tune.campaign

The trial's run lives in runs/<campaign>/trial-NNN/, beside Tune's files for the trial, and is
an ordinary run: `vcell evaluate`, `vcell export` and a re-run resume work on it. The training
runs in a thread of the trial; the Train controller forwards each validation report through a
queue, and the trial passes it on to Tune (with a checkpoint for PBT). When the scheduler stops
the trial, the trial kills its controller and removes the workers' placement group: without the
Ray dashboard nothing else would, and the next trial's workers would wait forever for cores.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ray.train.v2.api.callback import UserCallback
from ray.tune import Callback

from vcell.compat import placement_group_from_hex, ray_train_callback_bases, worker_group_placement_group
from vcell.config.schema import VCellConfig
from vcell.errors import VCellError
from vcell.files import atomic_write
from vcell.evaluate.evaluation import evaluate_finished
from vcell.train.checkpoint import CheckpointStore
from vcell.train.ray_train import RunHooks, train
from vcell.train.tracking import wandb_run_id
from vcell.trees import flatten
from vcell.tune.space import apply_values

log = logging.getLogger(__name__)
ControllerCallback, WorkerGroupCallback = ray_train_callback_bases()  # not public in Ray 2.60 (vcell.compat)
PLACEMENT_GROUP_FILE = ".placement_group"
SOURCE_FILE = "vcell_source.json"  # in a checkpoint given to Tune: whose run and which step it is
EXPLOITS_FILE = "exploits.json"  # a PBT trial's lineage: the steps at which it continued another trial
# the trial itself needs no core (its workers hold them); Ray refuses an empty request, so it asks
# for one byte of memory, which every node has
TRIAL_ACTOR_RESOURCES = {"CPU": 0, "memory": 1}


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares: passed once to Ray (tune.with_parameters), not in each trial's name."""

    base: dict  # the campaign's training config tree, paths absolute, without the tune section
    campaign: str
    directory: str  # runs/<campaign>/, absolute
    metric: str
    needs_evaluation: bool
    checkpoints_to_tune: bool


class TrialNamer:
    """Tune trial -> 'trial-003': short, numbered in the order the search made them, the same after
    a restore (the number comes from the search's own counter, which Tune saves with the campaign)."""

    def __init__(self, first_number: int) -> None:
        self.first_number = first_number  # Ray's basic generator counts from 0, its Searcher wrapper from 1

    def __call__(self, trial) -> str:
        return f"trial-{int(trial.experiment_tag.split('_')[0]) - self.first_number:03d}"


def trial_config(setup: TrialSetup, values: dict, name: str) -> VCellConfig:
    tree = apply_values(setup.base, values)
    tree.update(name=name)
    tree["scaling"]["storage_path"] = setup.directory
    tree["wandb"]["group"] = tree["wandb"]["group"] or setup.campaign
    tree["train"]["progress_bar"] = False  # trials run side by side: Tune's status table is the progress
    if setup.needs_evaluation:
        tree["evaluate"]["at_end"] = True
    return VCellConfig.model_validate(tree)


# -- Ray Train callbacks (they run in the Train controller) ---------------------------------------
class ForwardReports(UserCallback):
    """Puts rank 0's validation reports on the trial's queue."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if metrics and "step" in metrics[0]:
            self.queue.put(dict(metrics[0]))


class TrialLink(ControllerCallback, WorkerGroupCallback):
    """Hands the controller to the trial and records the workers' placement group beside the run."""

    def __init__(self, queue, placement_group_file: str) -> None:
        self.queue, self.placement_group_file = queue, placement_group_file

    def after_controller_start(self, train_run_context) -> None:
        import ray

        self.queue.put({"controller": ray.get_runtime_context().current_actor})

    def after_worker_group_start(self, worker_group) -> None:
        group = worker_group_placement_group(worker_group)
        if group is None:
            log.warning("cannot find the worker group's placement group: a stopped trial may hold its cores")
            return
        identifier = group.id.hex().encode()
        atomic_write(self.placement_group_file, lambda stream: stream.write(identifier))


def remove_placement_group(run_directory: Path) -> bool:
    """Remove the placement group a trial's workers held, if it still exists; whether one was removed."""
    import ray

    path = run_directory / PLACEMENT_GROUP_FILE
    if not path.is_file() or not ray.is_initialized():
        return False
    identifier = path.read_text().strip()
    state = ray.util.placement_group_table().get(identifier, {}).get("state")
    if state not in ("CREATED", "PENDING", "RESCHEDULING"):
        return False
    ray.util.remove_placement_group(placement_group_from_hex(identifier))
    return True


class ReleaseWorkers(Callback):
    """Ray Tune callback (driver side): when a trial ends for any reason, its workers' placement group
    goes too (the trial does this itself when it can; this catches a trial that died abruptly)."""

    def __init__(self, campaign_directory: str) -> None:
        self.campaign_directory = campaign_directory

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        remove_placement_group(Path(self.campaign_directory) / trial.custom_dirname)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.on_trial_complete(iteration, trials, trial)


# -- PBT: checkpoints to Tune and back ------------------------------------------------------------
def checkpoint_for_tune(directory: Path, step: int):
    """A staging folder with the run's checkpoint at `step`, its history and where it came from
    (Tune copies it into its storage; PBT gives it to the trial that copies this one)."""
    source = CheckpointStore(directory).path(step)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".tune-checkpoint-"))
    try:
        shutil.copytree(source, staging / "checkpoint")
        if (directory / "history.csv").is_file():
            shutil.copy2(directory / "history.csv", staging / "history.csv")
    except (FileNotFoundError, shutil.Error):  # pruned meanwhile: report without one
        shutil.rmtree(staging, ignore_errors=True)
        return None
    (staging / SOURCE_FILE).write_text(json.dumps({"run": str(directory), "step": step}))
    return staging


def adopt_checkpoint(checkpoint, directory: Path) -> bool:
    """PBT exploit: replace this trial's checkpoints by another trial's (given by Tune) and record
    the lineage; whether it happened (the run then continues with a changed config)."""
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        source = json.loads((folder / SOURCE_FILE).read_text())
        if source["run"] == str(directory):  # its own: the run folder has it, or a newer one
            return False
        store = CheckpointStore(directory)
        for old in store.directories():
            shutil.rmtree(old)
        shutil.copytree(folder / "checkpoint", store.path(source["step"]))
        if (folder / "history.csv").is_file():
            shutil.copy2(folder / "history.csv", directory / "history.csv")
    (directory / "metrics.json").unlink(missing_ok=True)
    lineage_path = directory / EXPLOITS_FILE
    lineage = json.loads(lineage_path.read_text()) if lineage_path.is_file() else []
    lineage.append({"step": source["step"], "from": Path(source["run"]).name, "time": round(time.time(), 1)})
    text = json.dumps(lineage, indent=1).encode()
    atomic_write(lineage_path, lambda stream: stream.write(text))
    return True


def report(metrics: dict, directory: Path, with_checkpoint: bool) -> None:
    from ray import tune

    step = metrics.get("checkpoint_step")
    staging = checkpoint_for_tune(directory, step) if with_checkpoint and step == metrics["step"] else None
    if staging is None:
        tune.report(metrics)
        return
    try:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(staging)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- the trial ------------------------------------------------------------------------------------
def final_result(metrics: dict, objective: str) -> dict:
    """The last report of a trial: final losses and, when evaluated, every evaluation number."""
    result = {"step": metrics["steps"], **metrics.get("final_train", {}), **metrics.get("final_validation", {}),
              **{key: float(value) for key, value in flatten(metrics.get("evaluation", {}), "evaluation.").items()
                 if isinstance(value, (int, float)) and not isinstance(value, bool)}}
    if objective not in result:
        close = difflib.get_close_matches(objective, list(result), n=3, cutoff=0.4)
        raise VCellError(f"the trial finished but reported no {objective!r} (tune.metric)",
                         hint=f"close names: {', '.join(close)}" if close else "see the run's metrics.json for names")
    return result


def run_trial(values: dict, setup: TrialSetup) -> None:
    """Ray Tune's trainable (see module doc)."""
    from ray import tune
    from ray.util.queue import Empty, Queue

    name = tune.get_context().get_trial_name()
    config = trial_config(setup, values, name)
    directory = Path(setup.directory) / name
    exploited = adopt_checkpoint(tune.get_checkpoint(), directory)
    queue = Queue(actor_options={"num_cpus": 0})
    hooks = RunHooks(callbacks=(ForwardReports(queue), TrialLink(queue, str(directory / PLACEMENT_GROUP_FILE))),
                     wandb_id=wandb_run_id(setup.campaign, name), report_validation=True,
                     probe_storage=False,  # the campaign checked its folder from every node
                     evaluate=evaluate_finished)
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["metrics"] = train(config, resume_with_changes=exploited, progress=False, hooks=hooks)
        except BaseException as error:  # noqa: BLE001 - raised again in the trial's thread
            outcome["error"] = error

    thread = threading.Thread(target=fit, name=f"vcell-{name}", daemon=True)
    thread.start()
    controller, last_step = None, -1
    try:
        while thread.is_alive() or not queue.empty():
            try:
                message = queue.get(timeout=0.5)
            except Empty:
                continue
            controller = message.get("controller", controller)
            # the last step's validation goes to Tune with the final result, after evaluation and export:
            # reported now, it reaches ASHA's max_t and the scheduler stops the trial before the run is whole
            if "step" in message and last_step < message["step"] < config.train.steps:
                last_step = message["step"]
                report(message, directory, setup.checkpoints_to_tune)
    except BaseException:  # stopped by the scheduler (SystemExit in tune.report), or the actor is going
        stop_training(controller, directory)
        raise
    if "error" in outcome:
        raise outcome["error"]
    tune.report(final_result(outcome["metrics"], setup.metric))


def stop_training(controller, directory: Path) -> None:
    """Kill the trial's Train controller (its workers go with it) and free their cores at once."""
    import ray

    if controller is not None:
        with contextlib.suppress(Exception):
            ray.kill(controller, no_restart=True)
    with contextlib.suppress(Exception):
        remove_placement_group(directory)
