"""Atlas build throughput and peak memory, against `anndata.write_zarr` of the same cells.

    python benchmarks/build.py                      # 100k and 1M simulated cells (~10 min on 2 cores)
    python benchmarks/build.py --cells 100000       # one size
    python benchmarks/build.py --cells 20000 --keep # keep the files under benchmarks/.work/
    python benchmarks/build.py --memory             # peak RSS vs atlas size and file count (~15 min)

For each size the simulator's cells are first written to one .h5ad file (not timed). Each
contender then runs in a fresh process, so wall time and peak RSS are its own:
  vcell build     h5ad -> atlas: streamed, pre-shuffled, sharded, stats, checksums
  anndata         read_h5ad (whole file in memory) + write_zarr (Zarr v3 defaults): the reference
  vcell synth     simulate + build end to end (what `vcell atlas synth` costs)

--memory asks whether memory stays flat as atlases grow (at --genes 200, so the cells, not the
genes, are what grows): `vcell atlas synth` of 100k, 300k and 1M cells, and `vcell atlas build`
of 100k cells split into 20 or 200 .h5ad files and of 300k cells in 200 files (each file
missing its own random 10% of the genes, so the vocabulary is a union). Each runs in a fresh
process; peak RSS is VmHWM. The build holds one shard at a time (~1 GB of X by default, a
few million cells), so below one shard the peak grows with the atlas by design; here shards
are 100,000 cells (build.shard_cells) so that these sizes span 1 to 10 shards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import memory_mib

WORK = Path(__file__).resolve().parent / ".work"
MEMORY_SHARD_CELLS = 100_000


def write_input(cells: int, path: Path) -> None:
    """The simulator's cells as one ordinary .h5ad (the input both contenders read)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from vcell.atlas.synth import SimulatorSource
    from vcell.config.schema import SynthConfig

    source = SimulatorSource(SynthConfig(cells=cells))
    chunks = list(source.chunks(65536))
    matrix = sp.vstack([c.X for c in chunks], format="csr")
    obs = pd.concat([c.obs for c in chunks])
    ad.AnnData(matrix, obs=obs, var=source.var).write_h5ad(path)


def write_files(cells: int, n_files: int, genes: int, directory: Path) -> list[Path]:
    """The simulator's cells as `n_files` .h5ad files, each without its own random 10% of the genes."""
    import anndata as ad
    import numpy as np

    from vcell.atlas.synth import SimulatorSource
    from vcell.config.schema import SynthConfig

    directory.mkdir(parents=True, exist_ok=True)
    source = SimulatorSource(SynthConfig(cells=cells, genes=genes))
    rng = np.random.default_rng(0)
    paths = []
    for index, chunk in enumerate(source.chunks(-(-cells // n_files))):
        kept = np.sort(rng.choice(genes, size=genes - genes // 10, replace=False))
        path = directory / f"part-{index:04d}.h5ad"
        ad.AnnData(chunk.X[:, kept], obs=chunk.obs, var=source.var.iloc[kept]).write_h5ad(path)
        paths.append(path)
    return paths


def run_child(arguments: list[str]) -> dict:
    """Run this script's worker in a fresh process; its JSON report plus wall seconds."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{arguments} failed:\n{result.stderr[-3000:]}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "seconds": time.perf_counter() - started}


def memory_scaling(genes: int) -> None:
    """Peak RSS of synth and of many-file builds as the cell and file counts grow (see the docstring)."""
    load = os.getloadavg()[0]
    rows = []
    for cells in (100_000, 300_000, 1_000_000):
        out = WORK / f"memory-synth-{cells}.zarr"
        report = run_child(["--worker", "vcell synth", "--out", str(out), "--cells", str(cells), "--genes", str(genes)])
        shutil.rmtree(out, ignore_errors=True)
        rows.append({"what": "vcell atlas synth", "files": 1, "cells": cells, **report})
        print(format_memory_row(rows[-1]), flush=True)
    for cells, n_files in ((100_000, 20), (100_000, 200), (300_000, 200)):
        directory = WORK / f"memory-files-{cells}-{n_files}"
        shutil.rmtree(directory, ignore_errors=True)
        paths = write_files(cells, n_files, genes, directory)
        out = WORK / f"memory-build-{cells}-{n_files}.zarr"
        report = run_child(["--worker", "vcell build", "--out", str(out), "--genes", str(genes), *[f"--input={p}" for p in paths]])
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(directory, ignore_errors=True)
        rows.append({"what": "vcell atlas build", "files": n_files, "cells": cells, **report})
        print(format_memory_row(rows[-1]), flush=True)
    print(f"\n{genes} genes; 1-minute load average at the start {load:.1f} (2 cores, shared)\n")
    print("| what              | files |     cells | seconds | s per 1M cells | peak RSS MiB |")
    print("|:------------------|------:|----------:|--------:|---------------:|-------------:|")
    print("\n".join(map(format_memory_row, rows)))


def format_memory_row(row: dict) -> str:
    return (f"| {row['what']:<17} | {row['files']:>5} | {row['cells']:>9,} | {row['seconds']:>7.0f} "
            f"| {row['seconds'] / row['cells'] * 1e6:>14.0f} | {row['peak_rss_mib']:>12,.0f} |")


def run_contender(name: str, source: Path, out: Path, cells: int) -> dict:
    """Time one contender in a child process; returns seconds and peak RSS (MiB)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--worker", name, f"--input={source}", "--out", str(out), "--cells", str(cells)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"contender": name, "seconds": seconds, "peak_rss_mib": report["peak_rss_mib"], "bytes": size}


def worker(name: str, inputs: list[Path], out: Path, cells: int, genes: int | None) -> None:
    """Runs in the child: the work being measured, then its peak RSS as one JSON line."""
    import warnings

    from vcell.config.schema import BuildConfig

    warnings.simplefilter("ignore")
    build = BuildConfig() if genes is None else BuildConfig(shard_cells=MEMORY_SHARD_CELLS)  # --genes: a --memory run
    if name == "vcell build":
        from vcell.atlas.anndata_source import AnnDataSource
        from vcell.atlas.build import build_atlas

        build_atlas([AnnDataSource(path) for path in inputs], out, build, progress=False)
    elif name == "anndata":
        import anndata as ad

        ad.settings.zarr_write_format = 3
        ad.read_h5ad(inputs[0]).write_zarr(out)
    elif name == "vcell synth":
        from vcell.atlas.synth import synthesize_atlas
        from vcell.config.schema import SynthConfig

        synth = SynthConfig(cells=cells) if genes is None else SynthConfig(cells=cells, genes=genes)
        synthesize_atlas(out, synth, build, progress=False)
    print(json.dumps({"peak_rss_mib": memory_mib("VmHWM")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, action="append", help="atlas sizes (default 100000 and 1000000)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--memory", action="store_true", help="peak RSS vs cells and files instead (see above)")
    parser.add_argument("--genes", type=int, help="simulated genes (default: the demo's 2,000; --memory: 200)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.input, args.out, (args.cells or [0])[0], args.genes)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    if args.memory:
        memory_scaling(args.genes or 200)
        return
    rows = []
    for cells in args.cells or [100_000, 1_000_000]:
        source = WORK / f"input-{cells}.h5ad"
        started = time.perf_counter()
        write_input(cells, source)
        print(f"# wrote {source.name} ({source.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s", flush=True)
        results = {
            name: run_contender(name, source, WORK / f"{name.replace(' ', '-')}-{cells}.zarr", cells)
            for name in ("anndata", "vcell build", "vcell synth")
        }
        for result in results.values():
            rows.append({"cells": cells, **result, "ratio": results["anndata"]["seconds"] / result["seconds"]})
            print(format_row(rows[-1]), flush=True)
        if not args.keep:  # only this script's files: other benchmarks keep theirs here too
            source.unlink(missing_ok=True)
            for name in results:
                shutil.rmtree(WORK / f"{name.replace(' ', '-')}-{cells}.zarr", ignore_errors=True)
    print("\n" + format_table(rows))


def format_row(row: dict) -> str:
    return (
        f"| {row['cells']:>9,} | {row['contender']:<12} | {row['seconds']:>8.1f} | {row['cells'] / row['seconds']:>10,.0f} "
        f"| {row['peak_rss_mib']:>8,.0f} | {row['bytes'] / 2**20:>8,.0f} | {row['ratio']:>5.2f}x |"
    )


def format_table(rows: list[dict]) -> str:
    header = "|     cells | contender    |  seconds |    cells/s | peak MiB | disk MiB | vs anndata |"
    rule = "|----------:|:-------------|---------:|-----------:|---------:|---------:|-----------:|"
    return "\n".join([header, rule, *map(format_row, rows)])


if __name__ == "__main__":
    main()
