"""The private APIs of Ray, torch and Lightning in `vcell.compat`, against the installed versions:
an upgrade that moves one fails here, by name, before it fails a training run or a campaign."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from vcell import compat


def test_ray_train_callback_and_failure_policy_classes_exist():
    controller, worker_group = compat.ray_train_callback_bases()
    assert hasattr(controller, "after_controller_start") and hasattr(worker_group, "after_worker_group_start")
    policy, decision = compat.ray_train_failure_policy_bases()
    assert hasattr(policy, "make_decision") and hasattr(decision, "RAISE")


def test_the_failure_policy_factory_is_replaced_only_inside_the_block():
    from ray.train.v2.api import data_parallel_trainer

    original = data_parallel_trainer.create_failure_policy

    class Policy:
        def __init__(self, failure_config):
            self.failure_config = failure_config

    with compat.ray_train_failure_policy(Policy):
        assert data_parallel_trainer.create_failure_policy is Policy
    assert data_parallel_trainer.create_failure_policy is original


def test_the_report_log_is_quieted():
    from ray.train.v2._internal.execution import context

    compat.quiet_ray_train_report_log()
    assert logging.getLogger(context.__file__).level == logging.WARNING


def test_a_placement_group_is_found_by_its_hex_id_and_logs_by_the_node(ray_cluster):
    import ray
    from ray.util.placement_group import placement_group

    group = placement_group([{"CPU": 1}])
    ray.get(group.ready(), timeout=60)
    identifier = group.id.hex()
    ray.util.remove_placement_group(compat.placement_group_from_hex(identifier))
    assert ray.util.placement_group_table()[identifier]["state"] == "REMOVED"
    assert os.path.isdir(compat.ray_logs_directory())


def test_a_worker_group_without_the_state_gives_none():
    assert compat.worker_group_placement_group(object()) is None


@pytest.mark.parametrize("learning_rates", [[0.5], [0.1, 0.2]])
def test_the_scheduler_reports_the_learning_rate_it_was_given(learning_rates):
    parameters = [torch.nn.Parameter(torch.zeros(1)) for _ in learning_rates]
    optimizer = torch.optim.AdamW([{"params": [p]} for p in parameters], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    compat.set_scheduler_last_lr(scheduler, learning_rates)
    assert scheduler.get_last_lr() == learning_rates
