"""Atlas build throughput and peak memory, against `anndata.write_zarr` of the same cells.

    python benchmarks/build.py                      # 100k and 1M simulated cells (~10 min on 2 cores)
    python benchmarks/build.py --cells 100000       # one size
    python benchmarks/build.py --cells 20000 --keep # keep the files under benchmarks/.work/

For each size the simulator's cells are first written to one .h5ad file (not timed). Each
contender then runs in a fresh process, so wall time and peak RSS are its own:
  vcell build     h5ad -> atlas: streamed, pre-shuffled, sharded, stats, checksums
  anndata         read_h5ad (whole file in memory) + write_zarr (Zarr v3 defaults): the reference
  vcell synth     simulate + build end to end (what `vcell atlas synth` costs)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import memory_mib

WORK = Path(__file__).resolve().parent / ".work"


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


def run_contender(name: str, source: Path, out: Path, cells: int) -> dict:
    """Time one contender in a child process; returns seconds and peak RSS (MiB)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--worker", name, "--input", str(source), "--out", str(out), "--cells", str(cells)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"contender": name, "seconds": seconds, "peak_rss_mib": report["peak_rss_mib"], "bytes": size}


def worker(name: str, source: Path, out: Path, cells: int) -> None:
    """Runs in the child: the work being measured, then its peak RSS as one JSON line."""
    import warnings

    warnings.simplefilter("ignore")
    if name == "vcell build":
        from vcell.atlas.anndata_source import AnnDataSource
        from vcell.atlas.build import build_atlas
        from vcell.config.schema import BuildConfig

        build_atlas([AnnDataSource(source)], out, BuildConfig(), progress=False)
    elif name == "anndata":
        import anndata as ad

        ad.settings.zarr_write_format = 3
        ad.read_h5ad(source).write_zarr(out)
    elif name == "vcell synth":
        from vcell.atlas.synth import synthesize_atlas
        from vcell.config.schema import BuildConfig, SynthConfig

        synthesize_atlas(out, SynthConfig(cells=cells), BuildConfig(), progress=False)
    print(json.dumps({"peak_rss_mib": memory_mib("VmHWM")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, action="append", help="atlas sizes (default 100000 and 1000000)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.input, args.out, args.cells[0])
        return
    WORK.mkdir(parents=True, exist_ok=True)
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
