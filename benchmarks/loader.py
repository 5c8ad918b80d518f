"""Loader throughput, memory and shuffle quality against anndata backed mode and annbatch.

    python benchmarks/loader.py                  # 500,000 x 2,000 simulated atlas, 5 rounds (~15 min on 2 cores)
    python benchmarks/loader.py --cells 200000 --skip "anndata backed"   # smaller, without the slow baseline

Every contender reads the same cells in 4,096-cell random-shuffled batches, densified to
float32 torch tensors on the CPU, from a warm page cache; each runs in its own process, so
its peak RSS (reported above the RSS it had before the first batch) is its own. Steady
state: the first 5 batches are not timed, the next --batches are.

The machine is shared and noisy, so contenders are interleaved: --repeats rounds (5), each
running every contender once, in an order rotated by one per round. The table gives the
median and range over the rounds, the ratio to annbatch with as many processes by median,
and the range of the per-round ratios (runs of one round saw the same load, as far as it
can be); the load average during the runs is printed with it.

  vcell raw          our loader, no normalisation (what the baselines deliver)
  vcell log1p        our loader with its default log1p(cp10k) normalisation
  vcell raw x2       two vcell processes at once (two training workers on two cores);
                     cells/s is the sum. vcell runs with its defaults (loader.threads=auto:
                     one background thread reading and assembling when a process has two
                     cores to itself, none when two processes share them).
  anndata backed     anndata.read_h5ad(backed="r"), sorted random indices per batch (scvi-tools' way)
  annbatch           scverse annbatch with zarrs at its best setting (chunk_size=512,
                     preload_nchunks=32) on the same cells written its way. annbatch needs
                     Python >= 3.12: make a separate environment for it and name its interpreter,
                       python3.12 -m venv /tmp/abenv && /tmp/abenv/bin/pip install "annbatch[zarrs]"
                       VCELL_ANNBATCH_PYTHON=/tmp/abenv/bin/python python benchmarks/loader.py
                     otherwise it is skipped (and said so).

Shuffle quality: entropy of the source-batch label inside each batch, divided by the same
entropy for batches drawn uniformly at random (1.00 = as mixed as random sampling).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import memory_mib

WORK = Path(__file__).resolve().parent / ".work"
BATCH = 4096
WARMUP = 5


def entropy(codes: np.ndarray) -> float:
    counts = np.bincount(codes[codes >= 0])
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def measure(batches, n_batches: int) -> dict:
    """Consume WARMUP + n_batches (x, label codes) pairs; time the steady part.

    `batches` is already set up (imports, open files), so the memory above the baseline is
    what iterating costs: buffers, batches in flight, caches.
    """
    baseline = memory_mib("VmRSS")
    entropies, cells = [], 0
    for _ in range(WARMUP):
        next(batches)
    started = time.perf_counter()
    for _ in range(n_batches):
        x, labels = next(batches)
        assert str(x.dtype).endswith("float32") and x.shape[0] == labels.shape[0]
        cells += x.shape[0]
        entropies.append(entropy(np.asarray(labels)))
    seconds = time.perf_counter() - started
    peak = memory_mib("VmHWM")
    return {"cells_per_s": cells / seconds, "peak_above_baseline_mib": peak - baseline, "entropy": float(np.mean(entropies))}


def vcell_batches(atlas: Path, normalise: bool):
    from vcell.config.schema import LoaderConfig
    from vcell.data.loader import AtlasLoader

    normalize = {} if normalise else {"target_sum": None, "log1p": False}
    config = LoaderConfig(
        batch_size=BATCH, buffer_cells=4 * BATCH, block_cells=2048, labels=["batch"],
        normalize=normalize, split={"val_fraction": 0.0, "test_fraction": 0.0},
    )
    loader = AtlasLoader(atlas, config, seed=int(time.time()) % 1000, rank=0, world_size=1)

    def batches():
        while True:
            for batch in loader:
                yield batch["x"], batch["batch"].numpy()
    return batches()


def anndata_batches(h5ad: Path):
    import anndata as ad
    import torch

    adata = ad.read_h5ad(h5ad, backed="r")
    codes = adata.obs["batch"].cat.codes.to_numpy()
    rng = np.random.default_rng(0)

    def batches():
        while True:
            index = np.sort(rng.choice(adata.n_obs, BATCH, replace=False))
            yield torch.from_numpy(adata.X[index].toarray().astype(np.float32, copy=False)), codes[index]
    return batches()


def annbatch_batches(collection_path: Path):
    """Runs under the annbatch interpreter (Python >= 3.12), which need not have torch."""
    import anndata as ad
    import zarr
    from annbatch import DatasetCollection, Loader

    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})

    def x_and_label(group):  # annbatch's advice: load only the obs columns training uses
        return ad.AnnData(X=ad.io.sparse_dataset(group["X"]), obs=ad.io.read_elem(group["obs"])[["batch"]])

    with ad.settings.override(remove_unused_categories=False):
        loader = Loader(batch_size=BATCH, chunk_size=512, preload_nchunks=32, shuffle=True)
        loader = loader.use_collection(DatasetCollection(collection_path), load_adata=x_and_label)

    def batches():
        while True:
            for batch in loader:
                x = batch["X"]
                dense = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
                yield dense.astype(np.float32, copy=False), np.asarray(batch["obs"]["batch"].cat.codes)
    return batches()


def worker(args) -> None:
    if args.worker.startswith("vcell"):
        import torch

        torch.set_num_threads(1)  # the consumer does no math; keep both cores for the loaders
        batches = vcell_batches(args.atlas, normalise=args.worker == "vcell-log1p")
    elif args.worker == "anndata":
        batches = anndata_batches(args.h5ad)
    else:
        batches = annbatch_batches(args.collection)
    print(json.dumps(measure(batches, args.batches)))


ANNBATCH_PYTHON = os.environ.get("VCELL_ANNBATCH_PYTHON", sys.executable)


def annbatch_available() -> bool:
    probe = "import annbatch, zarrs"
    return subprocess.run([ANNBATCH_PYTHON, "-c", probe], capture_output=True).returncode == 0


def prepare(cells: int) -> tuple[Path, Path, Path | None, np.ndarray]:
    """The atlas (simulated), the same cells as one .h5ad, and annbatch's collection if it can run."""
    import anndata as ad

    from vcell.atlas.ensure import ensure_synthetic_atlas
    from vcell.atlas.store import open_atlas
    from vcell.config.schema import BuildConfig, DataConfig, SynthConfig
    from vcell.data.reader import AtlasReader

    WORK.mkdir(parents=True, exist_ok=True)
    tag = f"{cells // 1000}k" if cells % 1000 == 0 else str(cells)
    atlas_path = WORK / f"loader-{tag}.zarr"
    ensure_synthetic_atlas(DataConfig(atlas=str(atlas_path), synth=SynthConfig(cells=cells)), BuildConfig(), progress=True)
    atlas = open_atlas(atlas_path)
    labels = AtlasReader(atlas, ["batch"]).read_labels("batch")
    h5ad = WORK / f"loader-{tag}.h5ad"
    if not h5ad.exists():
        parts = [ad.read_zarr(atlas_path / "shards" / s["name"]) for s in atlas.shards]
        ad.concat(parts, merge="same").write_h5ad(h5ad)
    collection = None
    if annbatch_available():
        collection = WORK / f"annbatch-{tag}.zarr"
        if not collection.exists():
            subprocess.run([ANNBATCH_PYTHON, "-c", (
                "import zarr, sys; from annbatch import DatasetCollection; "
                "zarr.config.set({'codec_pipeline.path': 'zarrs.ZarrsCodecPipeline'}); "
                f"DatasetCollection({str(collection)!r}).add_adatas(adata_paths=[{str(h5ad)!r}], shuffle=True)"
            )], check=True)
    return atlas_path, h5ad, collection, labels


def warm_cache(path: Path) -> None:
    for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
        with open(file, "rb") as handle:
            while handle.read(1 << 24):
                pass


def launch(name: str, paths: dict, batches: int, processes: int) -> subprocess.Popen:
    """One contender process; LOCAL_WORLD_SIZE tells it how many share the machine, as Ray Train does."""
    python = ANNBATCH_PYTHON if name == "annbatch" else sys.executable
    command = [python, __file__, "--worker", name, "--batches", str(batches)]
    command += [f"--{key}={value}" for key, value in paths.items() if value is not None]
    environment = {**os.environ, "LOCAL_WORLD_SIZE": str(processes)}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


def collect(process: subprocess.Popen, name: str) -> dict:
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def ideal_entropy(labels: np.ndarray, draws: int = 200) -> float:
    rng = np.random.default_rng(1)
    return float(np.mean([entropy(labels[rng.choice(len(labels), BATCH, replace=False)]) for _ in range(draws)]))


CONTENDERS = {  # label -> the worker of each process
    "anndata backed": ["anndata"], "vcell raw": ["vcell-raw"], "vcell log1p": ["vcell-log1p"],
    "annbatch": ["annbatch"], "vcell raw x2": ["vcell-raw", "vcell-raw"], "annbatch x2": ["annbatch", "annbatch"],
}


def run_once(label: str, paths: dict, batches: int) -> dict:
    """One contender once, its processes started together; cells/s is their sum."""
    workers = CONTENDERS[label]
    for path in (paths["atlas"], paths["h5ad"]) if "annbatch" not in label else (paths["collection"],):
        warm_cache(path)
    load = os.getloadavg()[0]
    processes = [launch(name, paths, batches, len(workers)) for name in workers]
    results = [collect(p, label) for p in processes]
    return {
        "cells_per_s": sum(r["cells_per_s"] for r in results),
        "peak_mib": max(r["peak_above_baseline_mib"] for r in results),
        "entropy": float(np.mean([r["entropy"] for r in results])), "load": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=500_000)
    parser.add_argument("--batches", type=int, default=60, help="timed batches per run (>= 50)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each runs every contender once")
    parser.add_argument("--skip", action="append", default=[], help="leave out a contender (e.g. 'anndata backed')")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    for key in ("atlas", "h5ad", "collection"):
        parser.add_argument(f"--{key}", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    atlas, h5ad, collection, labels = prepare(args.cells)
    paths = {"atlas": atlas, "h5ad": h5ad, "collection": collection}
    ideal = ideal_entropy(labels)
    plan = [label for label in CONTENDERS if label not in args.skip]
    if collection is None:
        print("# annbatch not importable here (it needs Python >= 3.12 and `annbatch[zarrs]`): skipped", flush=True)
        plan = [label for label in plan if "annbatch" not in label]
    runs: dict[str, list[dict]] = {label: [] for label in plan}
    for round_ in range(args.repeats):
        # Interleaved (A B C A B C ...), each round starting one contender later, so a burst of load
        # from elsewhere on the machine hits every contender alike instead of one of them.
        for label in plan[round_ % len(plan):] + plan[: round_ % len(plan)]:
            runs[label].append(run_once(label, paths, args.batches))
            print(f"# round {round_ + 1}: {label}: {runs[label][-1]['cells_per_s']:,.0f} cells/s "
                  f"(load {runs[label][-1]['load']:.2f})", flush=True)
    print_table(runs, args.cells, ideal)


def print_table(runs: dict[str, list[dict]], cells: int, ideal: float) -> None:
    """Median and range over the rounds; ratios to annbatch with as many processes, by median and per round."""
    speed = {label: np.array([r["cells_per_s"] for r in rs]) for label, rs in runs.items()}
    processes = {label: len(CONTENDERS[label]) for label in runs}
    annbatch = {processes[label]: label for label in runs if label.startswith("annbatch")}
    load = np.array([r["load"] for rs in runs.values() for r in rs])
    print(f"\n{cells:,} cells x 2,000 genes, batches of {BATCH:,}, dense float32; {len(next(iter(speed.values())))} "
          f"interleaved rounds; 1-minute load average during the runs {load.min():.1f}-{load.max():.1f}\n")
    print("| contender      | procs | cells/s median | range            | peak MiB | shuffle | vs annbatch (median) | per round |")
    print("|:---------------|------:|---------------:|:-----------------|---------:|--------:|---------------------:|:----------|")
    for label, values in speed.items():
        peak = np.median([r["peak_mib"] for r in runs[label]])
        shuffle = np.mean([r["entropy"] for r in runs[label]]) / ideal
        baseline = annbatch.get(processes[label])
        versus, paired = "n/a", "n/a"
        if baseline is not None and baseline != label:
            versus = f"{np.median(values) / np.median(speed[baseline]):.2f}x"
            ratios = values / speed[baseline]  # the same round: the same load, as far as it can be
            paired = f"{ratios.min():.2f}-{ratios.max():.2f}x"
        span = f"{values.min():,.0f}-{values.max():,.0f}"
        print(f"| {label:<14} | {processes[label]:>5} | {np.median(values):>14,.0f} | {span:<16} | {peak:>8,.0f} "
              f"| {shuffle:>7.3f} | {versus:>20} | {paired:<9} |")


if __name__ == "__main__":
    main()
