"""Discrete or continuous heterogeneity: does a class that keeps splitting have gaps?

Two figures, both on the particles' features in their parent's frame (``trust/classifier.py``),
reduced to principal-component scores:

* :func:`gap_ratio` of a 2-way split: the members projected on the line through the two child
  means; a Gaussian kernel density (``scipy.stats.gaussian_kde``) of those positions, with
  Scott's bandwidth of the children's own spread; the ratio of its lowest value between the two
  child means to the lower of its values at the child means. Two separate states leave an empty valley (ratio near 0); a graded
  change along one direction (a uniform spread, a hinge, views along an arc) leaves none (near 1).
* :func:`collinearity` of several groups: the fraction of the variance of their means carried by
  the first principal component (1: the means lie on one line).

:func:`line_evidence` joins them for three or more groups of one class (its children, or its
children with one child's own children in its place): means on one line and no gap between
neighbours along it is continuous heterogeneity along one direction — classifying further only
cuts the same continuum into smaller pieces, so it is reported with its figures and the class is
not split further.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import gaussian_kde

__all__ = ["gap_ratio", "collinearity", "line_evidence", "CONTINUOUS_MESSAGE"]

CONTINUOUS_MESSAGE = ("continuous heterogeneity along one direction: classification will not "
                      "end; use a continuous method (3DVA, cryoDRGN)")

#: points of the density curve between the two child means
_GRID = 64


def gap_ratio(scores: np.ndarray, labels: np.ndarray) -> float:
    """Valley-to-peak density ratio (module docstring) of ``scores (n, q)`` split by ``labels
    (n,)`` in {0, 1}; 1.0 when the child means coincide (nothing to separate)."""
    labels = np.asarray(labels)
    a, b = scores[labels == 0].mean(0), scores[labels == 1].mean(0)
    axis = b - a
    length = float(np.linalg.norm(axis))
    if length == 0:
        return 1.0
    position = (scores - a) @ (axis / length)
    if np.ptp(position) == 0:
        return 1.0
    # Scott's factor on the children's own spread, not the pooled one, which two separate
    # children inflate until the valley between them fills
    within = np.sqrt(np.mean([position[labels == c].var() for c in (0, 1)]))
    density = gaussian_kde(position, bw_method=max(within, 1e-12) / position.std()
                           * len(position) ** -0.2)
    grid = np.linspace(0.0, length, _GRID)
    values = density(grid)
    return float(values.min() / min(values[0], values[-1]))


def collinearity(means: np.ndarray) -> float:
    """Fraction of the variance of ``means (G, q)`` (G ≥ 2 group means) along their first
    principal component."""
    centred = means - means.mean(0)
    power = np.linalg.svd(centred, compute_uv=False) ** 2
    return float(power[0] / power.sum()) if power.sum() > 0 else 1.0


def line_evidence(scores: np.ndarray, groups: np.ndarray, *, min_gap: float,
                  min_collinearity: float) -> dict:
    """The evidence for continuous heterogeneity among G ≥ 3 groups of one class: ``scores (n,
    q)``, ``groups (n,)`` in 0..G-1 (a class's children, one of them replaced by its own
    children). The groups are ordered along the first principal component of their means; the
    figures are ``collinearity`` of the means, ``gap`` the lowest :func:`gap_ratio` of two
    neighbours in that order (the deepest valley), and ``continuous``: gap ≥ ``min_gap`` and
    collinearity ≥ ``min_collinearity``."""
    groups = np.asarray(groups)
    means = np.stack([scores[groups == g].mean(0) for g in range(int(groups.max()) + 1)])
    centred = means - means.mean(0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    order = np.argsort(centred @ direction)
    gaps = [gap_ratio(scores[(groups == a) | (groups == b)],
                      (groups[(groups == a) | (groups == b)] == b).astype(int))
            for a, b in zip(order[:-1], order[1:])]
    line = collinearity(means)
    return {"gap": min(gaps), "collinearity": line,
            "continuous": bool(min(gaps) >= min_gap and line >= min_collinearity)}
