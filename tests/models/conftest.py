"""Model tests run tiny models: one intra-op thread is faster than several (no OpenMP hand-offs),
and much faster when another process shares the cores (OpenMP workers spin while they wait)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
