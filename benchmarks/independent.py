"""GRN recovery on an independent simulator (SERGIO), model vs base vs co-expression / partial correlation.

    pip install -e ".[science]"                        # SERGIO (sergio-scsim) is an optional extra
    python benchmarks/independent.py                   # ~4,200 cells x 100 genes, 300 steps (a few minutes on 2 cores)
    python benchmarks/independent.py --steps 1500 --seed 1 --workdir benchmarks/.independent
    python benchmarks/independent.py --evaluate base,stochastic,regulatory   # + vcell evaluate's table per model
    python benchmarks/independent.py --evaluate regulatory --set model.regulatory.residual_rank=4

What is simulated, which prior the model gets and how knockdowns are made: see
`vcell/evaluate/independent.py`. The table gives, over every regulator -> gene pair, the AUPRC
and AUROC of each method's edge ranking against SERGIO's true network and the share of true
edges given the right sign (NaN: the method has no sign). `--evaluate` also trains the named
catalogue models from their `configs/models/` files on the SERGIO cells (30% held out at random)
and prints the standard evaluation table of each (`vcell evaluate`: embedding vs PCA, hidden-gene
reconstruction, held-out count log-likelihood, seen perturbations vs their training cells).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vcell.evaluate.evaluation import summary_lines  # noqa: E402
from vcell.evaluate.independent import evaluate_on_sergio, run_sergio_benchmark  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cells-per-condition", type=int, default=200, help="cells per (cell type, perturbation)")
    parser.add_argument("--workdir", default="benchmarks/.independent", help="where the .h5ad, atlas and prior go")
    parser.add_argument("--evaluate", default="", help="comma-separated catalogue models to train and evaluate as "
                                                        "`vcell evaluate` does (e.g. base,stochastic,regulatory)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every --evaluate model, as on `vcell train` (repeatable; "
                             "e.g. model.regulatory.residual_rank=4)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    result = run_sergio_benchmark(args.workdir, steps=args.steps, seed=args.seed, cells_per_condition=args.cells_per_condition)
    print(f"\n{time.perf_counter() - start:.0f} s\n")
    print(result.table())
    names = [name for name in args.evaluate.split(",") if name]
    if names:
        configs = {name: CONFIGS / f"{name.replace('+', '_')}.yaml" for name in names}
        evaluated = evaluate_on_sergio(args.workdir, configs, steps=args.steps, seed=args.seed,
                                       cells_per_condition=args.cells_per_condition, overrides=args.set)
        for name, results in evaluated.items():
            print(f"\n{name} on SERGIO ({args.steps} steps, seed {args.seed})")
            print("\n".join(summary_lines(results)))


if __name__ == "__main__":
    main()
