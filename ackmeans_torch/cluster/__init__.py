"""Clustering engine: ACK-means, its baselines and size penalties (see engine.py)."""

from ackmeans_torch.cluster.engine import (
    ConvergenceWarning,
    Dissimilarity,
    SquaredEuclidean,
    fit_clusters,
)
from ackmeans_torch.cluster.estimator import ACKMeans

__all__ = ["ACKMeans", "ConvergenceWarning", "Dissimilarity", "SquaredEuclidean", "fit_clusters"]
