"""`vcell embed --tasks N`: Ray tasks embed consecutive spans of an input; the driver writes them.

Each task opens the model folder and the input itself (nothing large travels to it) and
returns its span's embeddings; the driver keeps at most two spans per task in flight and
writes them in input order, so memory stays bounded by those spans whatever the input size.
The result is identical to embedding in one process (cells never depend on their neighbours).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vcell.cluster import ray_cluster
from vcell.config.train import ScalingSection

SPANS_PER_TASK = 4  # finer spans balance uneven tasks; each costs a model load (~0.1 s)
MAX_SPAN_CELLS = 100_000  # ~bounds a span's result: 100k cells x (latent + statistics) floats


def embed_span(model_directory: str, source: str, first: int, last: int, batch_size: int, layer: str | None,
               gene_key: str | None) -> tuple[np.ndarray, dict, dict]:
    """(latent, per-cell statistics, last batch's statistics) of cells [first, last) of `source`."""
    import torch

    from vcell.evaluate.cells import open_cells
    from vcell.evaluate.embed import embed_batch
    from vcell.evaluate.export import open_trained

    torch.set_num_threads(1)  # one core per task, as Ray scheduled it
    trained = open_trained(model_directory)
    stream = open_cells(source, trained, span=(first, last), layer=layer, gene_key=gene_key)
    latents, per_cell, stats = [], {}, {}
    for _, batch in stream.batches(batch_size):
        latent, cells, stats = embed_batch(trained, batch)
        latents.append(latent)
        for name, values in cells.items():
            per_cell.setdefault(name, []).append(values)
    return np.concatenate(latents), {name: np.concatenate(parts) for name, parts in per_cell.items()}, stats


def spans(n_cells: int, tasks: int, batch_size: int) -> list[tuple[int, int]]:
    size = min(MAX_SPAN_CELLS, max(batch_size, math.ceil(n_cells / (tasks * SPANS_PER_TASK))))
    return [(first, min(first + size, n_cells)) for first in range(0, n_cells, size)]


def parallel_batches(model_directory: Path, source, n_cells: int, batch_size: int, tasks: int, layer: str | None,
                     gene_key: str | None, address: str | None) -> Iterator[tuple[slice, np.ndarray, dict, dict]]:
    """(rows, latent, per-cell statistics, statistics) per span, in input order."""
    import ray

    with ray_cluster(ScalingSection(address=address)):  # reads only where the cluster is
        task = ray.remote(num_cpus=1)(embed_span)
        todo = deque(spans(n_cells, tasks, batch_size))
        pending: deque = deque()

        def submit() -> None:
            first, last = todo.popleft()
            reference = task.remote(str(Path(model_directory).resolve()), str(Path(source).resolve()), first, last,
                                    batch_size, layer, gene_key)
            pending.append(((first, last), reference))

        while todo and len(pending) < 2 * tasks:
            submit()
        while pending:
            (first, last), reference = pending.popleft()
            latent, per_cell, stats = ray.get(reference)
            if todo:
                submit()
            yield slice(first, last), latent, per_cell, stats
