"""Evaluation: metrics against baselines and against the simulator's ground truth."""
