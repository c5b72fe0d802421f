"""ARI and NMI (eval/metrics.py) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ackmeans_torch.eval.metrics import adjusted_rand_index, normalized_mutual_info


def test_identical_up_to_relabeling():
    """Permuted labels are the same partition: ARI = NMI = 1 (numpy and torch inputs)."""
    a = np.array([0, 0, 1, 1, 2, 2])
    b = torch.tensor([5, 5, 3, 3, 9, 9])
    assert adjusted_rand_index(a, b) == pytest.approx(1.0)
    assert normalized_mutual_info(a, b) == pytest.approx(1.0)


def test_hand_computed_ari_and_nmi():
    """a = [0,0,0,1,1,1], b = [0,0,1,1,2,2]: contingency [[2,1,0],[0,1,2]];
    Σ C(n_ij,2) = 2, Σ C(a_i,2) = 6, Σ C(b_j,2) = 3, C(6,2) = 15 → expected 1.2, max 4.5,
    ARI = 0.8/3.3 = 0.2424…; I = (4/6)·ln 2, H(a) = ln 2, H(b) = ln 3 → NMI = (4/3)ln2/(ln2+ln3)."""
    a, b = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    assert adjusted_rand_index(a, b) == pytest.approx(0.8 / 3.3)
    expected_nmi = (4 / 6) * np.log(2) / ((np.log(2) + np.log(3)) / 2)
    assert normalized_mutual_info(a, b) == pytest.approx(expected_nmi)


def test_independent_labelings_score_near_zero():
    """Two independent random labelings of 20,000 items into 10 classes: |ARI| < 0.01, NMI < 0.01."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 10, 20000), rng.integers(0, 10, 20000)
    assert abs(adjusted_rand_index(a, b)) < 0.01
    assert normalized_mutual_info(a, b) < 0.01


def test_length_mismatch_rejected():
    """Labelings of different lengths raise a ValueError."""
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        adjusted_rand_index([0, 1, 1], [0, 1])
