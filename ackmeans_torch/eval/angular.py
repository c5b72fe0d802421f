"""How good a 2D classification of projections with known poses is (the paper's evaluation).

* within-class angular distances: for every pair of images in the same class, the angle between
  their viewing directions (``ops.rotations.viewing_angle``; psi does not enter) — the paper's
  Fig. 1a histogram; a good class holds one view, so small angles;
* class-size figures: coefficient of variation, min, max, empty and singleton classes (Fig. 1b);
* agreement with the orientation-centre labels: ARI and NMI (``eval/metrics.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from ackmeans_torch.eval.metrics import adjusted_rand_index, normalized_mutual_info
from ackmeans_torch.ops.rotations import viewing_angle


def within_class_angles(labels: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """Angles (deg) between viewing directions of all pairs of images sharing a label.

    ``labels (N,)``; ``angles_deg (N, ≥2)`` RELION (rot, tilt[, psi]). Returns ``(P,)`` with
    P = Σ_j n_j (n_j − 1) / 2."""
    labels = np.asarray(labels)
    poses = torch.tensor(np.asarray(angles_deg, dtype=np.float64)[:, :2])
    out = []
    for label in np.unique(labels):
        members = poses[torch.as_tensor(np.flatnonzero(labels == label))]
        if len(members) < 2:
            continue
        i, j = torch.triu_indices(len(members), len(members), offset=1)
        out.append(viewing_angle(members[i], members[j]).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def size_summary(labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """Class-size figures of ``labels (N,)`` (0-based) over ``n_classes`` classes."""
    sizes = np.bincount(np.asarray(labels), minlength=n_classes)
    return {"size_cv": float(sizes.std() / sizes.mean()), "size_min": int(sizes.min()),
            "size_max": int(sizes.max()), "empty": int((sizes == 0).sum()),
            "singletons": int((sizes == 1).sum())}


def evaluate_classification(labels: np.ndarray, n_classes: int, angles_deg: np.ndarray,
                            truth: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
    """Summary figures and the within-class angles of a classification (module docstring)."""
    angles = within_class_angles(labels, angles_deg)
    summary = {"median_angle": float(np.median(angles)) if len(angles) else float("nan"),
               "frac_below_10": float((angles < 10).mean()) if len(angles) else float("nan"),
               "frac_below_20": float((angles < 20).mean()) if len(angles) else float("nan"),
               **size_summary(labels, n_classes)}
    if truth is not None:
        summary["ari"] = float(adjusted_rand_index(truth, labels))
        summary["nmi"] = float(normalized_mutual_info(truth, labels))
    return summary, angles
