"""Classify until exhaustive: split every class in two while a split is trustworthy.

For a class (its particles ``subset``), the 2-way split is tried ``replicates`` times (seeds
differ; more classes when they disagree, below) with the
:class:`~ackmeans_torch.trust.classifier.Classifier`; the run agreeing best with the others gives
the children. The split is accepted only when

(a) it is reproducible: the median ARI over the pairs of replicates is ≥ ``min_ari``;
(b) both children hold ≥ ``min_size`` particles;
(c) the children differ beyond what a split of homogeneous data gives. The figures are the
    partition's distances (``(n, K)``: each particle's leave-one-out dissimilarity to each
    child, ``trust/classifier.py``) less each particle's mean over the children, as
    principal-component scores (:func:`relative_scores`), and the cluster index
    CI = W / T (within-children sum of squares over the total). The null is a class without
    structure: Gaussian scores with the same component variances (SigClust, Liu et al. 2008,
    JASA 103:1281), split by k-means (Lloyd from random starts, the best of a few),
    ``null_draws`` times. p = (1 + #{null CI ≤ observed CI}) / (1 + null_draws); accepted when
    p ≤ ``alpha``. A Gaussian-homogeneous class is so split with probability ≤ ``alpha`` (the
    stated false-split rate per test): the observed CI comes from the classifier's labels, never
    better than the k-means optimum, and the variances include the split direction's own — both
    make the test conservative. How close real homogeneous classes come to that is measured
    (``scripts/bench_trust.py``).

A mixture of three or more states has several equally good 2-way splits, which replicates pick
differently: when (a) fails for 2 classes, 3, ... ``max_children`` are tried the same way, and
the first number of classes the replicates agree on gives the children.

Accepted children are tried in turn (to ``max_depth``), except when the split shows continuous
heterogeneity (``trust/continuous.py``): a 2-way split without a gap between its children is
followed by a 3-class classification of the class, and a class whose three (or more) classes lie
on one line without a gap between neighbours is reported continuous, stays one leaf, and is not
split further. The leaves left are the exhaustive classes.

Every decision is a row of :attr:`SplitTree.nodes`: ``node`` (``1``, ``1.2``, ``1.2.1``: the
path from its root class), ``parent``, ``depth``, ``n``, ``decision`` (split, leaf,
continuous), ``reason``, ``children``, ``sizes``
(``a/b/...``), ``ari_median``, ``ci``, ``null_ci_mean``, ``null_ci_sd``, ``p_value``, ``gap``
(the deepest valley between neighbouring children) and ``collinearity`` (of three or more
groups). Figures a decision did not need are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.eval.metrics import adjusted_rand_index
from ackmeans_torch.trust.classifier import Classifier, Partition, check_subset
from ackmeans_torch.trust.continuous import CONTINUOUS_MESSAGE, gap_ratio, line_evidence
from ackmeans_torch.trust.parallel import Replicates

__all__ = ["SplitOptions", "SplitTree", "exhaustive_split", "split_test", "principal_scores",
           "relative_scores", "cluster_index"]

#: Lloyd iterations and random restarts of the null's k-means (a Gaussian's split settles in a
#: few; the best of the restarts keeps the null near the optimum, so the test stays conservative)
_LLOYD = 10
_RESTARTS = 3


@dataclass(frozen=True, kw_only=True)
class SplitOptions:
    """Thresholds of :func:`exhaustive_split` (module docstring; README "Trusting classes" says
    why each default)."""

    replicates: int = 3
    min_ari: float = 0.7
    min_size: int = 20
    alpha: float = 0.01
    null_draws: int = 199
    min_gap: float = 0.3
    min_collinearity: float = 0.8
    max_children: int = 4
    max_depth: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("replicates", self.replicates, 2)
        check_number("min_ari", self.min_ari, -0.5, 1.0)
        check_int("min_size", self.min_size, 2)  # a one-member child has no leave-one-out distance
        check_number("alpha", self.alpha, 0.0, 1.0)
        check_int("null_draws", self.null_draws, 1)
        check_number("min_gap", self.min_gap, 0.0)
        check_number("min_collinearity", self.min_collinearity, 0.0, 1.0)
        check_int("max_children", self.max_children, 2)
        check_int("max_depth", self.max_depth, 1)
        check_int("seed", self.seed, 0)
        if self.alpha < 1 / (1 + self.null_draws):
            raise InputError(f"alpha={self.alpha} is below the smallest p-value "
                             f"1/(1 + null_draws) = {1 / (1 + self.null_draws):.4g}; raise "
                             "null_draws or alpha")


def principal_scores(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, q)`` scores of ``features (n, F)`` on their q = min(n, F) principal components
    and the ``(q,)`` variances of those components."""
    centred = features - features.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u * s, s ** 2 / max(len(features) - 1, 1)


def relative_scores(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`principal_scores` of ``distances (n, K)`` less each particle's mean over the K
    classes (what a particle shares with every class, its own norm and noise, says nothing of
    which class it is in, and would dominate the variance the null splits along); the K − 1
    components left."""
    scores, variances = principal_scores(distances - distances.mean(1, keepdims=True))
    keep = variances > variances.max() * 1e-12
    return scores[:, keep], variances[keep]


def cluster_index(scores: np.ndarray, labels: np.ndarray) -> float:
    """CI = within-group sum of squares / total sum of squares of ``scores (n, q)`` split by
    ``labels (n,)`` (0-based groups)."""
    total = ((scores - scores.mean(0)) ** 2).sum()
    within = sum(((scores[labels == c] - scores[labels == c].mean(0)) ** 2).sum()
                 for c in np.unique(labels))
    return float(within / total) if total > 0 else 1.0


def _null_cluster_index(variances: np.ndarray, n: int, k: int, draws: int,
                        seed: int) -> np.ndarray:
    """``(draws,)`` CI of the k-means split of ``n`` Gaussian points with these component
    ``variances``: Lloyd from ``_RESTARTS`` sets of k random points, the best kept per draw."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((draws, n, len(variances))) * np.sqrt(variances)
    total = ((points - points.mean(1, keepdims=True)) ** 2).sum((1, 2))
    best = np.full(draws, np.inf)
    rows = np.arange(draws)[:, None]
    for _ in range(_RESTARTS):
        centres = points[rows, np.argsort(rng.random((draws, n)), 1)[:, :k]]
        for _ in range(_LLOYD):
            distance = ((points[:, :, None] - centres[:, None]) ** 2).sum(-1)  # (draws, n, k)
            member = np.eye(k, dtype=bool)[distance.argmin(-1)]  # (draws, n, k)
            count = member.sum(1)[..., None]
            centres = np.where(count > 0, np.einsum("dnk,dnq->dkq", member, points)
                               / np.maximum(count, 1), centres)
        within = ((points[:, :, None] - centres[:, None]) ** 2).sum(-1).min(-1).sum(1)
        best = np.minimum(best, within)
    return best / total


def split_test(features: np.ndarray, labels: np.ndarray, *, draws: int, seed: int) -> dict:
    """Test (c) of the module docstring for ``features (n, F)`` (a partition's distances)
    split by ``labels (n,)`` into k ≥ 2 groups (0-based): ``ci``, ``null_ci_mean``,
    ``null_ci_sd``, ``p_value``, and the principal-component ``scores (n, q)``."""
    scores, variances = relative_scores(features)
    observed = cluster_index(scores, labels)
    null = _null_cluster_index(variances, len(features), len(np.unique(labels)), draws, seed)
    return {"ci": observed, "null_ci_mean": float(null.mean()), "null_ci_sd": float(null.std()),
            "p_value": float((1 + (null <= observed).sum()) / (1 + draws)), "scores": scores}


@dataclass
class SplitTree:
    """The result of :func:`exhaustive_split`: ``nodes`` (one row per decision, module
    docstring), ``labels (N,)`` the 0-based leaf of every particle, ``leaves`` the node name of
    each leaf (leaf i is ``leaves[i]``), ``continuous`` the nodes reported continuous."""

    nodes: pd.DataFrame
    labels: np.ndarray
    leaves: list[str]
    continuous: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        """How many splits were accepted."""
        return int((self.nodes["decision"] == "split").sum())

    def messages(self) -> list[str]:
        """One line per continuous class, with its evidence."""
        rows = self.nodes.set_index("node")
        return [f"class {name} ({int(rows.at[name, 'n'])} particles): {CONTINUOUS_MESSAGE} "
                f"(its groups lie on one line: collinearity {rows.at[name, 'collinearity']:.2f}; "
                f"no gap between neighbours: density ratio >= {rows.at[name, 'gap']:.2f}; "
                f"groups of {rows.at[name, 'sizes']} particles)" for name in self.continuous]


@dataclass
class _Decision:
    row: dict
    labels: np.ndarray | None = None
    scores: np.ndarray | None = None

    @property
    def accepted(self) -> bool:
        return self.row["decision"] == "split"


def _sizes(labels: np.ndarray, k: int) -> str:
    return "/".join(str(int(c)) for c in np.bincount(labels, minlength=k))


class _Splitter:
    def __init__(self, run: Replicates, options: SplitOptions):
        self.run, self.options = run, options
        self.rows: list[dict] = []
        self.leaves: list[tuple[str, np.ndarray]] = []
        self.continuous: list[str] = []
        self.calls = 0

    def classify(self, subset: np.ndarray, k: int, times: int = 1) -> list[Partition]:
        """``times`` runs in ``k`` classes, each with the next seed."""
        first = self.calls + 1
        self.calls += times
        return self.run([(subset, k, self.options.seed + c) for c in range(first, first + times)])

    def decide(self, subset: np.ndarray, name: str, depth: int) -> _Decision:
        """Try to split one class (module docstring): the decision and its figures."""
        opt = self.options
        row = {"node": name, "parent": name.rpartition(".")[0] or None, "depth": depth,
               "n": len(subset), "decision": "leaf", "reason": "", "children": 0,
               "sizes": "", "ari_median": np.nan, "ci": np.nan, "null_ci_mean": np.nan,
               "null_ci_sd": np.nan, "p_value": np.nan, "gap": np.nan, "collinearity": np.nan}
        if depth >= opt.max_depth:
            row["reason"] = f"max_depth={opt.max_depth} reached"
            return _Decision(row)
        if len(subset) < 2 * opt.min_size:
            row["reason"] = f"fewer than 2 x min_size={opt.min_size} particles"
            return _Decision(row)
        for k in range(2, opt.max_children + 1):
            # a mixture of three or more states has several equally good 2-way splits, which
            # replicates pick differently: more classes are tried before calling it irreproducible
            runs = self.classify(subset, k, opt.replicates)
            ari = np.zeros((opt.replicates, opt.replicates))
            for a, b in combinations(range(opt.replicates), 2):
                ari[a, b] = ari[b, a] = adjusted_rand_index(runs[a].labels, runs[b].labels)
            row["ari_median"] = float(np.median(ari[np.triu_indices(opt.replicates, 1)]))
            if row["ari_median"] >= opt.min_ari:
                break
        else:
            row["reason"] = (f"not reproducible: median ARI {row['ari_median']:.2f} < "
                             f"{opt.min_ari} for 2 to {opt.max_children} classes")
            return _Decision(row)
        chosen = runs[int(np.argmax(ari.sum(1)))]
        labels = chosen.labels
        k = chosen.distances.shape[1]
        row.update(sizes=_sizes(labels, k), children=k)
        if np.bincount(labels, minlength=k).min() < opt.min_size:
            row["reason"] = f"a child has fewer than min_size={opt.min_size} particles"
            return _Decision(row)
        test = split_test(chosen.distances, labels, draws=opt.null_draws,
                          seed=opt.seed + self.calls)
        scores = test.pop("scores")
        row.update(test)
        if k == 2:
            row["gap"] = gap_ratio(scores, labels)
        else:
            row.update({key: value for key, value in line_evidence(
                scores, labels, min_gap=opt.min_gap,
                min_collinearity=opt.min_collinearity).items() if key != "continuous"})
        if row["p_value"] > opt.alpha:
            row["reason"] = (f"children within the homogeneous null: p {row['p_value']:.3f} > "
                             f"alpha={opt.alpha}")
            return _Decision(row)
        row.update(decision="split", reason=(
            f"reproducible in {k} classes, large enough, beyond the null"))
        return _Decision(row, labels, scores)

    def _line(self, scores: np.ndarray, labels: np.ndarray) -> dict:
        return line_evidence(scores, labels, min_gap=self.options.min_gap,
                             min_collinearity=self.options.min_collinearity)

    def _continuous(self, decision: _Decision, name: str, subset: np.ndarray) -> None:
        decision.row.update(decision="continuous", reason=CONTINUOUS_MESSAGE)
        self.continuous.append(name)
        self.leaves.append((name, subset))

    def grow(self, subset: np.ndarray, name: str, depth: int) -> None:
        opt = self.options
        decision = self.decide(subset, name, depth)
        self.rows.append(decision.row)
        if not decision.accepted:
            self.leaves.append((name, subset))
            return
        k = decision.row["children"]
        if k > 2 and self._line(decision.scores, decision.labels)["continuous"]:
            self._continuous(decision, name, subset)
            return
        if k == 2 and decision.row["gap"] >= opt.min_gap:
            # two children without a gap between them: do three classes of the class lie on
            # one line without gaps too, or does a third group stand apart?
            three, = self.classify(subset, 3)
            sizes = np.bincount(three.labels, minlength=3)
            evidence = {"continuous": False} if sizes.min() < opt.min_size else self._line(
                relative_scores(three.distances)[0], three.labels)
            decision.row["collinearity"] = evidence.get("collinearity", np.nan)
            if evidence["continuous"]:
                decision.row.update(gap=min(decision.row["gap"], evidence["gap"]),
                                    sizes=_sizes(three.labels, 3))
                self._continuous(decision, name, subset)
                return
        for c in range(k):
            self.grow(subset[decision.labels == c], f"{name}.{c + 1}", depth + 1)


def exhaustive_split(classifier: Classifier, n_items: int, *,
                     options: SplitOptions | None = None, start=None,
                     workers: int = 1) -> SplitTree:
    """Split the ``n_items`` particles until exhaustive (module docstring) with ``classifier``
    (``trust/classifier.py``). ``start (n_items,)``: 0-based classes of a
    classification to start from, each a root (None: all particles one root class ``1``).
    ``workers`` > 1: the replicates of each decision in that many processes
    (``trust/parallel.py``; the same tree as in sequence)."""
    options = options or SplitOptions()
    check_int("n_items", n_items, 1)
    start = np.zeros(n_items, dtype=np.int64) if start is None else np.asarray(start)
    if start.shape != (n_items,):
        raise InputError(f"start must have one class per particle ({n_items}), got "
                         f"shape {start.shape}")
    with Replicates(classifier, workers) as run:
        splitter = _Splitter(run, options)
        for k in np.unique(start):
            splitter.grow(check_subset(np.flatnonzero(start == k), n_items), str(int(k) + 1), 0)
    labels = np.empty(n_items, dtype=np.int64)
    for i, (_, members) in enumerate(splitter.leaves):
        labels[members] = i
    return SplitTree(nodes=pd.DataFrame(splitter.rows), labels=labels,
                     leaves=[name for name, _ in splitter.leaves],
                     continuous=splitter.continuous)
