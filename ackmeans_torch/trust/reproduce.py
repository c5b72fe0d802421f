"""Reproducibility of a classification ("double confirm"): R runs with different seeds, classes
matched across runs, and per class how much of it comes back.

Runs: replicate r classifies with seed ``seed + r`` either every particle or (``halves``) a random
half drawn from the same seed, so two runs share about half their particles. Matching: the
reference run is the one agreeing best with the others (highest mean ARI); every other run's
classes are mapped onto the reference's by the Hungarian assignment that maximises the total
overlap of members (``scipy.optimize.linear_sum_assignment`` on the K×K overlap table over the
particles both runs classified). Per class k (the reference's numbering):

* ``size_mean``, ``size_sd``, ``size_min``, ``size_max``: its matched size over the runs (on
  halves, each run's size counts only its half), and ``size_cv`` = sd / mean;
* ``jaccard_mean``, ``jaccard_min``: the Jaccard index |A ∩ B| / |A ∪ B| of its members in the
  reference and in each other run, over the particles both classified;
* ``stable``: its stable members, ISAC's notion: particles in matched class k in every run that
  classified them (and classified by at least two runs);
* ``stability`` = stable / |members in any run| (the R-way Jaccard index; 1: every run gave the
  same members).

Overall: ARI and NMI (``eval/metrics.py``) of every pair of runs on their common particles.
A class made by asking for too many classes is cut differently by each seed: its members move
between its matched neighbours, which lowers its stability and spreads its size — the user's
"counts shift by ~1k" signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from ackmeans_torch.errors import InputError, check_int
from ackmeans_torch.eval.metrics import adjusted_rand_index, normalized_mutual_info
from ackmeans_torch.trust.classifier import Classifier
from ackmeans_torch.trust.parallel import Replicates

__all__ = ["Reproducibility", "match_runs", "reproduce"]

#: label of a particle a run did not classify (``halves``)
ABSENT = -1


@dataclass
class Reproducibility:
    """``labels (R, N)``: each run's classes mapped onto the reference run's (0-based; ``ABSENT``
    for particles a run did not classify); ``reference`` the reference run; ``classes`` one row
    per class (module docstring); ``pairs`` one row per pair of runs (``run_a``, ``run_b``,
    ``common``, ``ari``, ``nmi``); ``stable (N,)`` the class of each stable member, ``ABSENT``
    for the unstable ones."""

    labels: np.ndarray
    reference: int
    classes: pd.DataFrame
    pairs: pd.DataFrame
    stable: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def summary(self) -> dict:
        """Runs, classes, mean/min pairwise ARI and NMI, stable fraction, median stability."""
        return {"runs": int(self.labels.shape[0]), "classes": self.n_classes,
                "reference_run": self.reference + 1,
                "ari_mean": float(self.pairs["ari"].mean()),
                "ari_min": float(self.pairs["ari"].min()),
                "nmi_mean": float(self.pairs["nmi"].mean()),
                "stable_fraction": float((self.stable != ABSENT).mean()),
                "stability_median": float(self.classes["stability"].median())}


def _overlap(a: np.ndarray, b: np.ndarray, n_classes: int) -> np.ndarray:
    table = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


def _pairs(labels: np.ndarray) -> pd.DataFrame:
    rows = []
    for a, b in combinations(range(labels.shape[0]), 2):
        common = (labels[a] != ABSENT) & (labels[b] != ABSENT)
        if common.sum() < 2:
            raise InputError(f"runs {a + 1} and {b + 1} share {int(common.sum())} particles; "
                             "give more particles or classify all of them (halves=false)")
        rows.append({"run_a": a + 1, "run_b": b + 1, "common": int(common.sum()),
                     "ari": adjusted_rand_index(labels[a][common], labels[b][common]),
                     "nmi": normalized_mutual_info(labels[a][common], labels[b][common])})
    return pd.DataFrame(rows)


def match_runs(labels, n_classes: int) -> Reproducibility:
    """Match the classes of ``labels (R, N)`` (R ≥ 2 runs, 0-based labels < ``n_classes``,
    ``ABSENT`` where a run did not classify a particle) and measure them (module docstring)."""
    labels = np.asarray(labels, dtype=np.int64)
    check_int("n_classes", n_classes, 1)
    if labels.ndim != 2 or labels.shape[0] < 2:
        raise InputError(f"labels must have shape (R, N) with R >= 2 runs, got {labels.shape}")
    if labels.max() >= n_classes or labels.min() < ABSENT:
        raise InputError(f"labels must be in [0, n_classes={n_classes}) or {ABSENT} (absent)")
    runs = labels.shape[0]
    pairs = _pairs(labels)
    agreement = np.zeros(runs)
    for row in pairs.itertuples():
        agreement[[row.run_a - 1, row.run_b - 1]] += row.ari
    reference = int(np.argmax(agreement))
    matched = labels.copy()
    for r in range(runs):
        if r == reference:
            continue
        common = (labels[reference] != ABSENT) & (labels[r] != ABSENT)
        ours, theirs = linear_sum_assignment(
            _overlap(labels[reference][common], labels[r][common], n_classes), maximize=True)
        mapping = np.empty(n_classes, dtype=np.int64)
        mapping[theirs] = ours
        present = labels[r] != ABSENT
        matched[r, present] = mapping[labels[r, present]]
    seen = matched != ABSENT
    agreed = (matched == matched.max(0)) | ~seen  # one label over every run that saw it
    same = agreed.all(0) & (seen.sum(0) >= 2)
    stable = np.where(same, matched.max(0), ABSENT)
    rows = []
    for k in range(n_classes):
        sizes = (matched == k).sum(1)
        jaccard = []
        for r in range(runs):
            if r == reference:
                continue
            common = seen[reference] & seen[r]
            a, b = matched[reference][common] == k, matched[r][common] == k
            union = int((a | b).sum())
            jaccard.append((a & b).sum() / union if union else 1.0)
        ever = int((matched == k).any(0).sum())
        n_stable = int((stable == k).sum())
        rows.append({"class": k + 1, "size_mean": float(sizes.mean()),
                     "size_sd": float(sizes.std(ddof=1)), "size_min": int(sizes.min()),
                     "size_max": int(sizes.max()),
                     "size_cv": float(sizes.std(ddof=1) / sizes.mean()) if sizes.mean() else 0.0,
                     "jaccard_mean": float(np.mean(jaccard)), "jaccard_min": float(np.min(jaccard)),
                     "stable": n_stable, "stability": n_stable / ever if ever else 0.0})
    return Reproducibility(labels=matched, reference=reference, classes=pd.DataFrame(rows),
                           pairs=pairs, stable=stable)


def reproduce(classifier: Classifier, n_items: int, n_classes: int, *, replicates: int = 3,
              halves: bool = False, seed: int = 0, workers: int = 1) -> Reproducibility:
    """Run ``classifier`` ``replicates`` times on the ``n_items`` particles (seeds ``seed``,
    ``seed + 1``, ...; ``halves``: each on its own random half) and match the runs
    (:func:`match_runs`). ``workers`` > 1: the runs in that many processes
    (``trust/parallel.py``; the same result as in sequence)."""
    check_int("replicates", replicates, 2)
    check_int("n_classes", n_classes, 1)
    low = 2 * n_classes if halves else n_classes
    if n_items < low:
        raise InputError(f"{n_items} particles are too few for n_classes={n_classes}"
                         f"{' on halves' if halves else ''}; give at least {low}")
    subsets = [np.sort(np.random.default_rng(seed + r).permutation(n_items)[:n_items // 2])
               if halves else np.arange(n_items) for r in range(replicates)]
    with Replicates(classifier, workers) as run:
        runs = run([(subset, n_classes, seed + r) for r, subset in enumerate(subsets)])
    labels = np.full((replicates, n_items), ABSENT, dtype=np.int64)
    for r, (subset, partition) in enumerate(zip(subsets, runs)):
        labels[r, subset] = partition.labels
    return match_runs(labels, n_classes)
