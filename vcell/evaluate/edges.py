"""Scores of an inferred network against a true one: AUPRC, AUROC, sign agreement.

    scores = score_edges(np.abs(w), w, labels, true_sign)   # EdgeScores(auprc, auroc, sign_agreement)

`labels` (E,) marks which candidate edges are real; `true_sign` (E,) is +1/-1 on real edges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vcell.evaluate.metrics import average_precision, roc_auc


@dataclass
class EdgeScores:
    auprc: float  # area under precision-recall of the ranking (random = share of real edges)
    auroc: float  # P(a real edge ranks above a decoy); random = 0.5
    sign_agreement: float  # share of real edges given the right sign; NaN for unsigned scores

    def as_dict(self) -> dict:
        return asdict(self)


def score_edges(ranking: np.ndarray, signed: np.ndarray | None, labels: np.ndarray, true_sign: np.ndarray) -> EdgeScores:
    """ranking (E,) higher = more likely real; signed (E,) signed weights or None (unsigned)."""
    labels = np.asarray(labels, dtype=bool)
    sign = float("nan") if signed is None else float((np.sign(signed[labels]) == true_sign[labels]).mean())
    return EdgeScores(average_precision(ranking, labels), roc_auc(ranking, labels), sign)
