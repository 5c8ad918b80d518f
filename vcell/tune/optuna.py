"""Optuna's TPE as a campaign search, fed only with results that hold the objective.

Ray's `OptunaSearch` passes every intermediate result to Optuna and fails on one without the
objective. A campaign aiming at an evaluation metric reports it only at the end (intermediate
results carry validation losses for the scheduler), so those results are skipped here; TPE
learns from each trial's final objective either way.
"""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch


class FinalResultOptuna(OptunaSearch):
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)
