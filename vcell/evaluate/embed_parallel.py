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
from typing import TYPE_CHECKING

from vcell.cluster import ray_cluster
from vcell.config.train import ScalingSection

if TYPE_CHECKING:
    from vcell.evaluate.embed import Embedded

SPANS_PER_TASK = 4  # finer spans balance uneven tasks; each costs a model load (~0.1 s)
MAX_SPAN_CELLS = 100_000  # ~bounds a span's result: 100k cells x (latent + statistics) floats
# expression layers are G floats per cell each: a span's layers stay under this many floats
# (128 MiB), as the driver holds up to two spans per task
MAX_SPAN_LAYER_VALUES = 2**25


def embed_span(model_directory: str, source: str, first: int, last: int, batch_size: int, layer: str | None,
               gene_key: str | None, expression: tuple[str, ...] = ()) -> Embedded:
    """What embedding cells [first, last) of `source` gives."""
    import torch

    from vcell.evaluate.cells import open_cells
    from vcell.evaluate.embed import Embedded, embed_batch
    from vcell.evaluate.export import open_trained

    torch.set_num_threads(1)  # one core per task, as Ray scheduled it
    trained = open_trained(model_directory)
    stream = open_cells(source, trained, span=(first, last), layer=layer, gene_key=gene_key)
    return Embedded.concatenate([embed_batch(trained, batch, expression) for _, batch in stream.batches(batch_size)])


def spans(n_cells: int, tasks: int, batch_size: int, layer_width: int = 0) -> list[tuple[int, int]]:
    """[first, last) spans of cells; `layer_width`: expression floats per cell."""
    most = min(MAX_SPAN_CELLS, MAX_SPAN_LAYER_VALUES // layer_width) if layer_width else MAX_SPAN_CELLS
    size = max(1, min(most, max(batch_size, math.ceil(n_cells / (tasks * SPANS_PER_TASK)))))
    return [(first, min(first + size, n_cells)) for first in range(0, n_cells, size)]


def parallel_batches(model_directory: Path, source, n_cells: int, batch_size: int, tasks: int, layer: str | None,
                     gene_key: str | None, address: str | None, expression: tuple[str, ...] = (),
                     n_genes: int = 0) -> Iterator[tuple[slice, Embedded]]:
    """(rows, what embedding them gives) per span, in input order."""
    import ray

    with ray_cluster(ScalingSection(address=address)):  # reads only where the cluster is
        task = ray.remote(num_cpus=1)(embed_span)
        todo = deque(spans(n_cells, tasks, batch_size, len(expression) * n_genes))
        pending: deque = deque()

        def submit() -> None:
            first, last = todo.popleft()
            reference = task.remote(str(Path(model_directory).resolve()), str(Path(source).resolve()), first, last,
                                    batch_size, layer, gene_key, expression)
            pending.append(((first, last), reference))

        while todo and len(pending) < 2 * tasks:
            submit()
        while pending:
            (first, last), reference = pending.popleft()
            embedded = ray.get(reference)
            if todo:
                submit()
            yield slice(first, last), embedded
