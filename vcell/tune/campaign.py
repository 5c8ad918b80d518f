"""The campaign driver: `vcell tune` calls `tune_campaign`.

    summary = tune_campaign(load_config("configs/tune/quickstart.yaml"))
    tune_campaign(config)                        # again after the driver died: continues the campaign
    tune_campaign(config, retry_errored=True)    # ... and starts errored trials again

runs/<campaign>/ holds campaign.yaml (the resolved campaign config), one folder per trial
(trial-NNN/: a complete vcell run beside Tune's records of it), Ray Tune's experiment state,
and when the campaign ends results.csv, best.yaml and plots/. Everything that can be checked
without a cluster (space, objective, scheduler, resources) is checked before Ray starts, so a
typo costs a second, not a campaign.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

from vcell.cluster import local_resources, ray_cluster
from vcell.config.loader import dump_config, read_yaml_mapping
from vcell.config.schema import VCellConfig
from vcell.config.train import OPERATIONAL
from vcell.errors import VCellError
from vcell.files import atomic_write
from vcell.train.preflight import preflight
from vcell.train.training_plan import check_resources, format_plan, training_plan, with_model_inputs
from vcell.train.ray_train import absolute_paths, prepare_atlas, probe_storage
from vcell.train.run import config_diff
from vcell.trees import flatten
from vcell.tune.campaign_plan import CampaignPlan, campaign_plan
from vcell.tune.trial import TRIAL_ACTOR_RESOURCES, ReleaseWorkers, TrialNamer, TrialSetup, remove_placement_group, run_trial

log = logging.getLogger(__name__)
CAMPAIGN_FILE = "campaign.yaml"
# keys that may change between attempts of one campaign: where and with what it runs
RESUMABLE_CHANGES = (*OPERATIONAL, "tune.resources.", "tune.retries")


def campaign_directory(config: VCellConfig) -> Path:
    return (Path(config.scaling.storage_path) / config.name).resolve()


def campaign_identity(config: VCellConfig | dict) -> dict[str, object]:
    """The dotted keys that define a campaign: its trials' settings and the campaign's own."""
    tree = config.model_dump(mode="json") if isinstance(config, VCellConfig) else config
    return {key: value for key, value in flatten(tree).items() if not key.startswith(RESUMABLE_CHANGES)}


def prepare_campaign(directory: Path, config: VCellConfig, restart: bool) -> bool:
    """Check the folder against `config` (refusing a changed campaign), record the config; whether
    an earlier attempt exists to continue."""
    saved = directory / CAMPAIGN_FILE
    if directory.is_dir() and any(directory.iterdir()) and not saved.is_file():
        raise VCellError(f"{directory} exists and is not a campaign (no {CAMPAIGN_FILE})",
                         hint="choose another campaign name (--name) or scaling.storage_path")
    if restart and saved.is_file():
        shutil.rmtree(directory)
    resuming = saved.is_file()
    if resuming:
        differences = config_diff(read_yaml_mapping(saved), config, campaign_identity)
        if differences:
            shown = "\n    ".join(differences)
            raise VCellError(f"campaign '{config.name}' exists in {directory} with a different config:\n    {shown}",
                             hint="--restart deletes it and starts over; --name starts a new campaign")
    text = dump_config(config).encode()
    atomic_write(saved, lambda stream: stream.write(text))
    return resuming


def trial_setup(plan: CampaignPlan, directory: Path) -> TrialSetup:
    base = absolute_paths(plan.config).model_dump(mode="json")
    base.pop("tune")
    return TrialSetup(base=base, campaign=plan.config.name, directory=str(directory), metric=plan.config.tune.metric,
                      needs_evaluation=plan.needs_evaluation, checkpoints_to_tune=plan.checkpoints_to_tune)


def trial_count(plan: CampaignPlan) -> int:
    """Tune's num_samples: `tune.trials` counts trials, and a grid runs whole (see TuneSection)."""
    grid, trials = plan.space.grid_size(plan.config.tune.search), plan.config.tune.trials
    if trials % grid:
        raise VCellError(f"tune.trials={trials} is not a multiple of the grid's {grid} combinations",
                         hint=f"set tune.trials={grid} (or a multiple) to run every combination")
    return trials // grid


def make_tuner(plan: CampaignPlan, directory: Path, concurrent: int, resuming: bool, retry_errored: bool,
               progress: bool, samples: int):
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=trial_setup(plan, directory)),
                                    TRIAL_ACTOR_RESOURCES)
    if resuming and tune.Tuner.can_restore(str(directory)):
        log.info("continuing campaign '%s' from %s", plan.config.name, directory)
        return tune.Tuner.restore(str(directory), trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=retry_errored)
    settings = plan.config.tune
    namer = TrialNamer(first_number=1 if settings.search == "optuna" else 0)
    return tune.Tuner(
        trainable,
        param_space=plan.space.tune_domains(settings.search),
        tune_config=tune.TuneConfig(
            search_alg=plan.searcher(concurrent), scheduler=plan.scheduler(), num_samples=samples,
            trial_name_creator=namer, trial_dirname_creator=namer,
        ),
        run_config=tune.RunConfig(
            name=plan.config.name, storage_path=str(directory.parent),
            failure_config=tune.FailureConfig(max_failures=settings.retries),
            # PBT copies a trial from its newest checkpoint; a few kept in case a newer one is still arriving
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4) if plan.checkpoints_to_tune else None,
            callbacks=[ReleaseWorkers(str(directory))], verbose=1 if progress else 0,
        ),
    )


def tune_campaign(config: VCellConfig, *, restart: bool = False, retry_errored: bool = False,
                  progress: bool = True, dry_run: bool = False) -> dict:
    """Run (or continue) the campaign `config.tune` describes; the summary written to results.csv.
    `dry_run`: check the space, atlas, base model and resources, print the plan, write nothing."""
    from vcell.tune.results import campaign_results

    plan = campaign_plan(config)
    samples = trial_count(plan)
    atlas = prepare_atlas(config, progress, dry_run=dry_run)  # once here: trials must not race to build it
    plan = dataclasses.replace(plan, config=with_model_inputs(config, atlas))
    base = training_plan(plan.config, atlas)  # the base model builds on this atlas
    preflight(plan.config, atlas)  # labels, held-out groups, a batch per worker: once, not in every trial
    if dry_run:
        check_resources(config, local_resources() if config.scaling.address is None else {"CPU": 1e9, "GPU": 1e9})
        print(format_plan(base, plan.config))
        print(f"campaign    {config.tune.trials} trial(s), search {config.tune.search}, "
              f"objective {config.tune.metric} ({config.tune.mode}); keys searched: {', '.join(config.tune.space)}")
        return {"trials": config.tune.trials, "parameters": base.parameters}
    directory = campaign_directory(config)
    resuming = prepare_campaign(directory, config, restart)
    # Tune would reject a result without the objective; an evaluation objective exists only in a
    # trial's last result, and the trial itself checks that it is there (with a clear error)
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    with ray_cluster(config.scaling) as cluster:
        check_resources(config, cluster)
        probe_storage(directory)
        concurrent = plan.concurrent_trials(cluster)
        log.info("campaign '%s': %d trial(s), %d at a time, each %s", config.name, config.tune.trials, concurrent,
                 f"{config.scaling.workers} worker(s) x {config.scaling.cpus_per_worker} CPU")
        tuner = make_tuner(plan, directory, concurrent, resuming, retry_errored, progress, samples)
        grid = tuner.fit()
        for trial_directory in directory.glob("trial-*"):  # a trial that died abruptly
            remove_placement_group(trial_directory)
    return campaign_results(plan, grid, directory, progress)
