"""Agreement between two labelings (e.g. a clustering and the ground truth).

scikit-learn is not a dependency of this project, so the two standard indices are written here on
a contingency table (``scipy.sparse``, so large label counts stay cheap): the adjusted Rand index
(Hubert & Arabie 1985) and normalized mutual information with arithmetic-mean normalization
(scikit-learn's default), so figures are comparable with papers that use scikit-learn.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.special import comb

from ackmeans_torch.errors import InputError

__all__ = ["contingency_table", "adjusted_rand_index", "normalized_mutual_info", "matched_accuracy"]


def contingency_table(a, b) -> coo_matrix:
    """Counts n_ij of items with label i in ``a`` and j in ``b`` (any hashable integer labels)."""
    a = np.asarray(getattr(a, "cpu", lambda: a)()).ravel()
    b = np.asarray(getattr(b, "cpu", lambda: b)()).ravel()
    if a.shape != b.shape:
        raise InputError(f"labelings differ in length: {a.shape[0]} vs {b.shape[0]}")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = coo_matrix((np.ones(a.size, dtype=np.int64), (ia, ib)))
    table.sum_duplicates()
    return table


def adjusted_rand_index(a, b) -> float:
    """ARI in [−0.5, 1]: 1 for identical partitions (up to relabeling), ≈ 0 for random ones."""
    table = contingency_table(a, b)
    n = int(table.sum())
    sum_cells = comb(table.data, 2).sum()
    sum_a = comb(np.asarray(table.sum(1)).ravel(), 2).sum()
    sum_b = comb(np.asarray(table.sum(0)).ravel(), 2).sum()
    expected = sum_a * sum_b / comb(n, 2) if n > 1 else 0.0
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:  # both partitions trivial (one class, or all singletons): identical
        return 1.0
    return float((sum_cells - expected) / (maximum - expected))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(a, b) -> float:
    """NMI in [0, 1] = I(a; b) / mean(H(a), H(b)); 1 for identical partitions."""
    table = contingency_table(a, b)
    n = table.sum()
    row = np.asarray(table.sum(1)).ravel()
    col = np.asarray(table.sum(0)).ravel()
    nij = table.data.astype(np.float64)
    mi = float((nij / n * np.log(nij * n / (row[table.row] * col[table.col]))).sum())
    h_a, h_b = _entropy(row), _entropy(col)
    if h_a == 0 and h_b == 0:
        return 1.0
    return float(max(mi, 0.0) / ((h_a + h_b) / 2))


def matched_accuracy(labels, truth) -> float:
    """Fraction of items whose class is the one matched to their true class, classes matched
    one-to-one to maximise the agreement (Hungarian, ``scipy.optimize.linear_sum_assignment`` on
    the contingency table); with more classes than true classes the unmatched ones count as
    wrong."""
    from scipy.optimize import linear_sum_assignment

    table = contingency_table(labels, truth).toarray()
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / max(table.sum(), 1))
