"""Clustering engine: ACK-means, its baselines and size penalties (see engine.py)."""

from ackmeans_torch.cluster.engine import (
    ConvergenceWarning,
    Dissimilarity,
    SquaredEuclidean,
    fit_clusters,
)
from ackmeans_torch.cluster.estimator import ACKMeans
from ackmeans_torch.cluster.options import ClusterOptions

__all__ = ["ACKMeans", "ClusterOptions", "ConvergenceWarning", "Dissimilarity",
           "SquaredEuclidean", "fit_clusters"]
