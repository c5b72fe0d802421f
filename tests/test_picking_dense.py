"""Dense conflict component: incidence-list solver, no clique × clique matrix, a valid packing
within the reported gap of the LP bound."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse._base as spbase

from ackmeans_torch.picking import ilp
from ackmeans_torch.picking.packing import Packing, lagrangian_bound


def _dense_component(seed: int = 0, n_per: int = 1200):
    """Three pickers' boxes on a line (near-interval overlaps); a clique is one box of each picker
    within 3 units: ~3,600 boxes and ~33,000 cliques in a few large components."""
    rng = np.random.default_rng(seed)
    pos = [np.sort(rng.uniform(0, n_per, n_per)) for _ in range(3)]
    ids = [np.arange(n_per) + p * n_per for p in range(3)]
    rows = []
    for i, x in enumerate(pos[0]):
        b = np.flatnonzero(np.abs(pos[1] - x) < 3)
        c = np.flatnonzero(np.abs(pos[2] - x) < 3)
        for j in b:
            cc = c[np.abs(pos[2][c] - pos[1][j]) < 3]
            rows += [(ids[0][i], ids[1][j], ids[2][m]) for m in cc]
    members = np.array(rows)
    return members, rng.random(len(members)), 3 * n_per


def test_dense_component_without_clique_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large-component path: no sparse × sparse product (the AᵀA conflict matrix) is formed; the
    selection is a packing; objective ≥ (1 − gap) × bound and ≤ the Lagrangian LP bound."""
    def no_product(self, other):
        raise AssertionError(f"sparse product {self.shape} @ {other.shape}")
    monkeypatch.setattr(spbase._spbase, "_matmul_sparse", no_product)
    monkeypatch.setattr(ilp, "LARGE_CLIQUES", 2_000)
    members, w, n = _dense_component()
    assert len(w) > 10_000
    sel = ilp.select_cliques(members, w, n_nodes=n, time_limit=2.0)
    assert np.bincount(sel.component).max() > 2_000  # at least one component takes the large path
    used = members[sel.selected].ravel()
    assert np.bincount(used, minlength=n).max() <= 1
    P = Packing(members)
    upper, _ = lagrangian_bound(w, P, np.full(P.n_boxes, w.max() / 3))  # any prices y >= 0 bound it
    assert sel.objective <= upper
    assert all(0.0 <= g < 0.05 for g in sel.gap.values())
    assert all((st == "optimal") == (c not in sel.gap) for c, st in sel.status.items())
