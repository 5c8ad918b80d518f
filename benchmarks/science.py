"""Learning checks on the simulator's ground truth: each enhancement vs `base` on its metric.

    python benchmarks/science.py                      # 30,000 cells x 500 genes, 1,500 steps (~12 min on 2 cores)
    python benchmarks/science.py --steps 300 --checks regulatory,memory
    python benchmarks/science.py --json results.json

Every model is trained with the plain single-process loop on the same cells (the 4 h time
point held out for all); each row compares the enhancement's catalogue model with `base`
(and, for memory, with `temporal` alone) and a random or naive reference, on held-out cells:

  regulatory    AUPRC of the learned edge scores (|standardised weight| against the regulator's
                and the target's other edges) over a noisy GRN prior (all true edges plus twice as
                many decoys); base: mean |d reconstruction / d input| (gradient attribution);
                baseline: the best of |co-expression|, |partial correlation| and partial
                correlation plus each knockdown's effect on the targets of the knocked-down
                regulator (Stouffer-combined z), each also background-corrected as the model's
                score is; AUROC and sign agreement of each beside it; random: the share of true
                edges. An independent simulator (SERGIO):
                benchmarks/independent.py.
  temporal      relative error of the predicted change at the held-out 4 h vs observed
                held-out cells; base predicts no change (1.0); reference: interpolating the
                observed 2 h and 8 h means.
  hierarchical  mean Pearson r of per-cell pathway activity with the simulator's; base: gene-set
                mean of its reconstruction; random: random gene sets of the same sizes.
  stochastic    held-out log-likelihood of raw counts (nats per cell): NB vs base's Gaussian
                (discretised on the count scale); baseline: the better of per-gene NBs knowing the
                library size, and the library size and cell type (fitted per type).
  resource      |error| of the predicted log shift of the other genes' total counts after
                knocking down a highly expressed gene (truth: the simulator's mechanism);
                base: composition at the cell's observed library size; random: no shift.
  memory        Pearson r of the predicted primed - naive difference with the truth; base and
                temporal-without-memory have no history, so 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vcell.evaluate.science import prepare_science  # noqa: E402
from vcell.evaluate.science_checks import CHECKS  # noqa: E402


def table(rows) -> str:
    """One line per metric: the catalogue model, base and the best simple baseline, and who wins."""
    lines = [f"{'model':<16} {'model':>9} {'base':>9} {'baseline':>9}  {'winner':<30} metric (baseline)"]
    for row in rows:
        lines.append(
            f"{row.enhancement:<16} {row.enhanced:>9.3f} {row.base:>9.3f} {row.baseline:>9.3f}  {row.winner:<30} "
            f"{row.metric} ({'higher' if row.higher_is_better else 'lower'} is better; baseline: {row.baseline_name})"
        )
        lines += [f"{'':<16} {key}: {value:.3f}" if isinstance(value, float) else f"{'':<16} {key}: {value}"
                  for key, value in row.reference.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=30000)
    parser.add_argument("--steps", type=int, default=1500, help="training steps per model")
    parser.add_argument("--size", default="small", help="model size preset")
    parser.add_argument("--hidden-dim", type=int, default=128, help="hidden width (overrides the preset)")
    parser.add_argument("--layers", type=int, default=1, help="hidden layers per MLP (overrides the preset)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    parser.add_argument("--workdir", default="benchmarks/.science", help="where the atlas and prior are kept")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    setup = prepare_science(
        args.workdir, cells=args.cells, steps=args.steps, size=args.size, batch_size=args.batch_size,
        model_overrides={"hidden_dim": args.hidden_dim, "n_layers": args.layers},
    )
    rows = []
    for name in args.checks.split(","):
        if name not in CHECKS:
            parser.error(f"unknown check {name!r}; choose from {', '.join(CHECKS)}")
        rows.append(CHECKS[name](setup))
    print(f"\n{args.cells:,} simulated cells x {setup.train['x'].shape[1]} genes, {args.steps} steps of "
          f"{args.batch_size} cells per model, size={args.size} (hidden {args.hidden_dim} x {args.layers}), "
          f"{time.perf_counter() - start:.0f} s\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([row.as_dict() for row in rows], indent=2))


if __name__ == "__main__":
    main()
