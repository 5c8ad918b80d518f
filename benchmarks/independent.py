"""GRN recovery on an independent simulator (SERGIO), model vs base vs co-expression / partial correlation.

    pip install -e ".[science]"                        # SERGIO (sergio-scsim) is an optional extra
    python benchmarks/independent.py                   # ~4,200 cells x 100 genes, 300 steps (a few minutes on 2 cores)
    python benchmarks/independent.py --steps 1500 --seed 1 --workdir benchmarks/.independent

What is simulated, which prior the model gets and how knockdowns are made: see
`vcell/evaluate/independent.py`. The table gives, over every regulator -> gene pair, the AUPRC
and AUROC of each method's edge ranking against SERGIO's true network and the share of true
edges given the right sign (NaN: the method has no sign).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vcell.evaluate.independent import run_sergio_benchmark  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cells-per-condition", type=int, default=200, help="cells per (cell type, perturbation)")
    parser.add_argument("--workdir", default="benchmarks/.independent", help="where the .h5ad, atlas and prior go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    result = run_sergio_benchmark(args.workdir, steps=args.steps, seed=args.seed, cells_per_condition=args.cells_per_condition)
    print(f"\n{time.perf_counter() - start:.0f} s\n")
    print(result.table())


if __name__ == "__main__":
    main()
