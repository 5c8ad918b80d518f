"""`vcell embed`: a trained model's view of every cell of an input, as AnnData.

    embed_run("runs/quickstart", "data/new.h5ad", "new_embedded.h5ad")

What the written `.h5ad` holds (n input cells, in input order; G = the model's genes):

- `obs`: the input's obs, plus one `vcell_<stat>` column per per-cell scalar statistic
  (resource models: `vcell_capacity`, `vcell_free_share`);
- `obsm["X_vcell"]`: (n, latent) the cell embedding (the latent mean for variational models);
- `obsm["vcell_<stat>"]`: (n, k) per-cell statistics: `vcell_pathway_activity` (n, P) and
  `vcell_compartment_activity` (n, C) (hierarchical), `vcell_pathway_allocation` (n, P)
  (resource), `vcell_scale_weight` (n, S) (multiscale); their column names are in
  `uns["vcell"]["columns"]`;
- `var`: the model's genes (index) with `vcell_<stat>` per-gene statistics
  (stochastic: `vcell_dispersion`, `vcell_extrinsic_variance_fraction`; temporal:
  `vcell_response_half_time` in hours; memory: `vcell_memory_retained_fraction`,
  `vcell_memory_half_time`); no expression matrix;
- `uns["vcell"]`: run, model, step, gene coverage of the input and the learned GRN edges
  (`edges`: source, target, weight; regulatory);
  `uns["vcell_writer"]`: "vcell embed" (so `--overwrite` knows the file is ours to replace).

Cells are streamed in batches: memory holds one batch of expression, and the outputs go
straight to disk. Evaluation mode and no masking, so a cell's embedding does not depend on
the batch it sits in (only on floating-point summation order, ~1e-6). The file is written to
a temporary name and renamed when complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import torch
from anndata.io import write_elem
from tqdm import tqdm

from vcell.evaluate.cells import CellStream, coverage_line, open_cells
from vcell.evaluate.export import Trained, open_trained
from vcell.errors import VCellError
from vcell.files import H5AD_WRITER_KEY, new_output_file, output_errors, staged_file

MIN_GENE_OVERLAP = 0.5  # default share of the model's genes an input must have (`--min-gene-overlap`)
ARRAY_ENCODING = {"encoding-type": "array", "encoding-version": "0.2.0"}


def embed_run(run: str | Path, input_path: str | Path | None, out: str | Path, *, batch_size: int = 1024,
              layer: str | None = None, gene_key: str | None = None, overwrite: bool = False,
              progress: bool = True, tasks: int = 0, address: str | None = None,
              min_gene_overlap: float = MIN_GENE_OVERLAP) -> Path:
    """Embed every cell of `input_path` (default: the run's training atlas) into `out`; with
    `tasks` > 1, that many Ray tasks (a local cluster, or `address`) embed consecutive spans of cells.
    An input sharing fewer than `min_gene_overlap` of the model's genes is refused."""
    if batch_size < 1:  # the command line checks this in argparse; library callers get it here
        raise VCellError(f"batch_size={batch_size}: embed needs at least one cell per batch")
    given = Path(out)
    out = new_output_file(given, ".h5ad", overwrite, inputs=[run, input_path])
    trained = open_trained(run)
    source = input_path or trained.config.data.atlas
    new_output_file(given, ".h5ad", overwrite, inputs=[source])  # the default input, now known
    stream = open_cells(source, trained, layer=layer, gene_key=gene_key, min_gene_overlap=min_gene_overlap)
    if progress:
        print(coverage_line(stream.coverage))
    for warning in stream.warnings:
        print(f"warning: {warning}")
    produced = None
    if tasks > 1:
        from vcell.evaluate.embed_parallel import parallel_batches

        produced = parallel_batches(trained.directory, source, stream.n_cells, batch_size, tasks, layer, gene_key,
                                    address)
    with output_errors(given):
        write_embeddings(trained, stream, out, batch_size=batch_size, progress=progress, produced=produced)
    return given


def cell_statistics(trained: Trained) -> dict[str, tuple[str, ...]]:
    """Statistics with one value (or row) per cell, by name."""
    return {name: shape for name, shape in trained.model.stat_shapes().items() if shape[:1] == ("B",)}


def embed_batch(trained: Trained, batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """(latent (b, D), per-cell statistics, every statistic as numpy) of one batch."""
    output = trained.model.describe(batch)
    stats = {name: value.detach().numpy() for name, value in output.stats.items()}
    per_cell = {name: stats[name] for name in cell_statistics(trained) if name in stats}
    return output.latent.numpy(), per_cell, stats


def local_batches(trained: Trained, stream: CellStream, batch_size: int) -> Iterator[tuple[slice, np.ndarray, dict, dict]]:
    for rows, batch in stream.batches(batch_size):
        yield (rows, *embed_batch(trained, batch))


def write_embeddings(trained: Trained, stream: CellStream, out: Path, *, batch_size: int = 1024,
                     progress: bool = True, produced: Iterator | None = None) -> Path:
    """Write what `produced` yields ((rows, latent, per-cell stats, stats) in input order; default:
    this process embeds `stream`) into `out`, batch by batch."""
    produced = produced if produced is not None else local_batches(trained, stream, batch_size)
    with staged_file(out) as temporary:
        skeleton(stream, trained).write_h5ad(temporary)
        scalars, last_stats = {}, {}
        with h5py.File(temporary, "a") as handle:
            bar = tqdm(total=stream.n_cells, unit="cells", desc="embed", disable=not progress, mininterval=2.0)
            for rows, latent, per_cell, last_stats in produced:
                write_rows(handle, "X_vcell", latent, rows, stream.n_cells)
                for name, values in per_cell.items():
                    if values.ndim == 1:
                        scalars.setdefault(name, np.empty(stream.n_cells, np.float32))[rows] = values
                    else:
                        write_rows(handle, f"vcell_{name}", values, rows, stream.n_cells)
                bar.update(rows.stop - rows.start)
            bar.close()
            finish(handle, trained, stream, scalars, last_stats)
    return out


def skeleton(stream: CellStream, trained: Trained) -> ad.AnnData:
    """obs and var only: obsm arrays are added on disk batch by batch."""
    obs = stream.obs.copy()
    obs.index = obs.index.astype(str)
    var = pd.DataFrame(index=pd.Index(trained.model.spec.gene_ids, name="gene_id"))
    return ad.AnnData(obs=obs, var=var)


def write_rows(handle: h5py.File, key: str, values: np.ndarray, rows: slice, n_cells: int) -> None:
    """obsm[key][rows] = values, creating the (n_cells, k) float32 dataset on first use."""
    path = f"obsm/{key}"
    if path not in handle:
        dataset = handle.create_dataset(path, shape=(n_cells, values.shape[1]), dtype=np.float32,
                                        chunks=(min(n_cells, 4096), values.shape[1]))
        dataset.attrs.update(ARRAY_ENCODING)
    handle[path][rows] = values.astype(np.float32)


def finish(handle: h5py.File, trained: Trained, stream: CellStream, scalars: dict, stats: dict) -> None:
    """Per-cell scalars into obs, per-gene statistics into var, the rest and provenance into uns."""
    obs = stream.obs.copy()
    obs.index = obs.index.astype(str)
    for name, values in scalars.items():
        obs[f"vcell_{name}"] = values
    var = pd.DataFrame(index=pd.Index(trained.model.spec.gene_ids, name="gene_id"))
    shapes = trained.model.stat_shapes()
    for name, value in stats.items():
        if shapes.get(name) == ("G",):
            var[f"vcell_{name}"] = np.asarray(value, dtype=np.float32)
    for key, frame in (("obs", obs), ("var", var)):
        del handle[key]
        write_elem(handle, key, frame)
    del handle["uns"]
    write_elem(handle, "uns", {"vcell": provenance(trained, stream, stats), H5AD_WRITER_KEY: "vcell embed"})


def provenance(trained: Trained, stream: CellStream, stats: dict) -> dict:
    spec = trained.model.spec
    info = {
        "run": trained.config.name, "model": trained.config.model.name, "model_folder": str(trained.directory),
        "input": str(stream.path), "coverage": {k: float(v) for k, v in stream.coverage.items()},
        "latent_key": "X_vcell",
        "columns": {"vcell_pathway_activity": list(spec.pathway_names),
                    "vcell_pathway_allocation": list(spec.pathway_names),
                    "vcell_compartment_activity": list(getattr(spec, "compartment_names", []))},
    }
    if "edge_weight" in stats and spec.grn is not None:
        genes = np.array(spec.gene_ids)
        info["edges"] = {"source": genes[spec.grn.source].tolist(), "target": genes[spec.grn.target].tolist(),
                         "weight": np.asarray(stats["edge_weight"], dtype=np.float64).tolist()}
    return info
