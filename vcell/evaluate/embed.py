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
  `vcell_memory_half_time`); no `X`;
- `layers["vcell_denoised"]`, `layers["vcell_imputed"]`: (n, G) expression, only when asked for
  (`expression=("denoised", "imputed")`, `--expression`; each is n x G float32 on disk): see
  `EXPRESSION_LAYERS`;
- `uns["vcell"]`: run, model, step, gene coverage of the input, what each expression layer holds
  (`layers`) and the learned GRN edges (`edges`: source, target, weight; regulatory);
  `uns["vcell_writer"]`: "vcell embed" (so `--overwrite` knows the file is ours to replace).

Cells are streamed in batches: memory holds one batch of expression, and the outputs go
straight to disk. Evaluation mode and no masking, so a cell's embedding does not depend on
the batch it sits in (only on floating-point summation order, ~1e-6). The file is written to
a temporary name and renamed when complete.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
CHUNK_VALUES = 2**20  # floats per on-disk chunk (4 MiB), at most 4,096 rows
# what `layers["vcell_<name>"]` holds, by name (log1p counts per 10,000, the run's normalisation)
EXPRESSION_LAYERS = {
    "denoised": "each cell's expression as its state gives it, free of counting noise and of its batch's "
                "learned offset (`VirtualCell.denoise`; count models: log1p of expected counts per 10,000)",
    "imputed": "each gene's value were it detected in the cell, as measured in its batch: what a missing "
               "(dropped-out or unmeasured) value would be (`VirtualCell.impute`; a Gaussian model, which has "
               "no model of detection, gives its reconstruction)",
}


@dataclass
class Embedded:
    """What a run of consecutive cells gives: latent (b, D); per-cell statistics (b,) or (b, k); the
    last batch's statistics (per-gene ones are the same in every batch); expression layers (b, G)."""

    latent: np.ndarray
    per_cell: dict[str, np.ndarray]
    stats: dict
    layers: dict[str, np.ndarray] = field(default_factory=dict)

    @staticmethod
    def concatenate(parts: Sequence[Embedded]) -> Embedded:
        def joined(key: str) -> dict[str, np.ndarray]:
            return {name: np.concatenate([getattr(part, key)[name] for part in parts]) for name in getattr(parts[0], key)}

        return Embedded(np.concatenate([part.latent for part in parts]), joined("per_cell"), parts[-1].stats,
                        joined("layers"))


def checked_expression(expression: Sequence[str]) -> tuple[str, ...]:
    unknown = [name for name in expression if name not in EXPRESSION_LAYERS]
    if unknown:
        raise VCellError(f"expression layer {unknown[0]!r} is not one vcell embed writes",
                         hint=f"choose from: {', '.join(EXPRESSION_LAYERS)}")
    return tuple(dict.fromkeys(expression))  # each once, in the order asked


def embed_run(run: str | Path, input_path: str | Path | None, out: str | Path, *, batch_size: int = 1024,
              layer: str | None = None, gene_key: str | None = None, overwrite: bool = False,
              progress: bool = True, tasks: int = 0, address: str | None = None,
              min_gene_overlap: float = MIN_GENE_OVERLAP, expression: Sequence[str] = ()) -> Path:
    """Embed every cell of `input_path` (default: the run's training atlas) into `out`; with
    `tasks` > 1, that many Ray tasks (a local cluster, or `address`) embed consecutive spans of cells.
    An input sharing fewer than `min_gene_overlap` of the model's genes is refused. `expression`:
    names of `EXPRESSION_LAYERS` to write as (n, G) layers."""
    if batch_size < 1:  # the command line checks this in argparse; library callers get it here
        raise VCellError(f"batch_size={batch_size}: embed needs at least one cell per batch")
    expression = checked_expression(expression)
    given = Path(out)
    out = new_output_file(given, ".h5ad", overwrite, inputs=[run, input_path])
    trained = open_trained(run)
    source = input_path or trained.config.data.atlas
    new_output_file(given, ".h5ad", overwrite, inputs=[source])  # the default input, now known
    stream = open_cells(source, trained, layer=layer, gene_key=gene_key, min_gene_overlap=min_gene_overlap)
    if progress:
        print(coverage_line(stream.coverage))
    for warning in [*stream.warnings, *expression_warnings(trained, expression)]:
        print(f"warning: {warning}")
    produced = None
    if tasks > 1:
        from vcell.evaluate.embed_parallel import parallel_batches

        produced = parallel_batches(trained.directory, source, stream.n_cells, batch_size, tasks, layer, gene_key,
                                    address, expression, trained.model.spec.n_genes)
    with output_errors(given):
        write_embeddings(trained, stream, out, batch_size=batch_size, progress=progress, produced=produced,
                         expression=expression)
    return given


def expression_warnings(trained: Trained, expression: Sequence[str]) -> list[str]:
    head = trained.model.head
    if "imputed" not in expression or head.likelihood is not None or getattr(head, "detected_level", None) is not None:
        return []
    return [f"model '{trained.config.model.name}' was trained before squared-error models learned a detected level "
            "(model.detected_level): its imputed layer is its reconstruction, which simple baselines beat at filling "
            "missing values (README, 'Hidden-gene reconstruction'); retrain it, or impute with a count model"]


def cell_statistics(trained: Trained) -> dict[str, tuple[str, ...]]:
    """Statistics with one value (or row) per cell, by name."""
    return {name: shape for name, shape in trained.model.stat_shapes().items() if shape[:1] == ("B",)}


def embed_batch(trained: Trained, batch: dict[str, torch.Tensor], expression: Sequence[str] = ()) -> Embedded:
    """One batch's latent, statistics and the expression layers named in `expression`."""
    # one encoding of the batch for the latent, the statistics and the layers asked for
    output = trained.model.describe(batch, denoised="denoised" in expression, imputed="imputed" in expression)
    stats = {name: value.detach().numpy() for name, value in output.stats.items()}
    per_cell = {name: stats[name] for name in cell_statistics(trained) if name in stats}
    layers = {name: output.views[name].numpy().astype(np.float32) for name in expression}
    return Embedded(output.latent.numpy(), per_cell, stats, layers)


def local_batches(trained: Trained, stream: CellStream, batch_size: int,
                  expression: Sequence[str] = ()) -> Iterator[tuple[slice, Embedded]]:
    for rows, batch in stream.batches(batch_size):
        yield rows, embed_batch(trained, batch, expression)


def write_embeddings(trained: Trained, stream: CellStream, out: Path, *, batch_size: int = 1024,
                     progress: bool = True, produced: Iterator | None = None, expression: Sequence[str] = ()) -> Path:
    """Write what `produced` yields ((rows, Embedded) in input order; default: this process embeds
    `stream`) into `out`, batch by batch."""
    produced = produced if produced is not None else local_batches(trained, stream, batch_size, expression)
    with staged_file(out) as temporary:
        skeleton(stream, trained).write_h5ad(temporary)
        scalars, last_stats = {}, {}
        with h5py.File(temporary, "a") as handle:
            bar = tqdm(total=stream.n_cells, unit="cells", desc="embed", disable=not progress, mininterval=2.0)
            for rows, cells in produced:
                write_rows(handle, "obsm/X_vcell", cells.latent, rows, stream.n_cells)
                for name, values in cells.per_cell.items():
                    if values.ndim == 1:
                        scalars.setdefault(name, np.empty(stream.n_cells, np.float32))[rows] = values
                    else:
                        write_rows(handle, f"obsm/vcell_{name}", values, rows, stream.n_cells)
                for name, values in cells.layers.items():
                    write_rows(handle, f"layers/vcell_{name}", values, rows, stream.n_cells)
                last_stats = cells.stats
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


def write_rows(handle: h5py.File, path: str, values: np.ndarray, rows: slice, n_cells: int) -> None:
    """handle[path][rows] = values (an obsm or layers entry), creating the (n_cells, k) float32
    dataset on first use."""
    if path not in handle:
        width = values.shape[1]
        chunk_rows = max(1, min(n_cells, 4096, CHUNK_VALUES // max(width, 1)))
        dataset = handle.create_dataset(path, shape=(n_cells, width), dtype=np.float32, chunks=(chunk_rows, width))
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
    info = provenance(trained, stream, stats)
    info["layers"] = {key: EXPRESSION_LAYERS[key.removeprefix("vcell_")] for key in handle["layers"]}
    write_elem(handle, "uns", {"vcell": info, H5AD_WRITER_KEY: "vcell embed"})


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
