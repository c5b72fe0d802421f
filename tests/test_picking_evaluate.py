"""Pick evaluation: pixel masks and one-to-one matching by hand, the y flip, real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.coords import PickSet, read_picks
from ackmeans_torch.picking.evaluate import evaluate_picks, match_pairs, match_scores, pixel_scores


def _ps(xy, size=10.0) -> PickSet:
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    return PickSet(xy, np.full(len(xy), size), np.ones(len(xy)))


def test_pixel_scores_by_hand() -> None:
    """Known answer: a 10-px box shifted by 5 px against the reference: TP 50, FP 50, FN 50 px;
    boxes past the micrograph edge are clipped, not wrapped."""
    s = pixel_scores(_ps([[10, 10]]), _ps([[15, 10]]), shape=(40, 40))
    assert (s.tp, s.fp, s.fn) == (50, 50, 50) and s.precision == 0.5
    edge = pixel_scores(_ps([[2, 2]]), _ps([[38, 38]]), shape=(40, 40))
    assert (edge.tp, edge.fp, edge.fn) == (0, 49, 49)


def test_matching_is_one_to_one_and_maximal() -> None:
    """Known answer: two picks near one reference give TP 1, FP 1; the chain case where the
    nearest-first greedy would match only one pair is matched fully (2 pairs)."""
    s = match_scores(_ps([[0, 0], [3, 0]]), _ps([[1, 0]]), radius=5)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    # pick 0 at 0, ref 0 at 4, pick 1 at 7.5, ref 1 at 11: greedy nearest takes (1, 0) at 3.5
    pairs = match_pairs(np.array([[0.0, 0], [7.5, 0]]), np.array([[4.0, 0], [11.0, 0]]), 4.0)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 0), (1, 1)]


def test_flip_y_and_totals() -> None:
    """The y flip maps the reference to height - y before matching; TOTAL sums counts."""
    ref = {"m": _ps([[10, 90]]), "n": _ps([[5, 5]])}
    picks = {"m": _ps([[10, 10]])}
    rows = evaluate_picks(picks, ref, methods=("match",), radius=3, flip_y=100)
    by = {r["micrograph"]: r for r in rows}
    assert by["m"]["tp"] == 1 and by["n"]["fn"] == 1 and by["TOTAL"]["recall"] == 0.5
    with pytest.raises(InputError, match="method 'iou' is unknown"):
        evaluate_picks(picks, ref, methods=("iou",))


def test_empiar10017_crYOLO_against_expert_set(shared_data: Path) -> None:
    """Real data: crYOLO's 719 picks against the 629-particle expert set (y flipped, 4096 px),
    matched within 54 px (half the 108 px diameter): precision 0.858 (the data README: ≈ 0.86),
    recall 0.981; without the flip only chance matches among dense picks remain (precision 0.35)."""
    d = shared_data / "picking" / "empiar10017"
    stem = "Falcon_2012_06_12-14_33_35_0"
    picks = {stem: read_picks(d / "crYOLO" / f"{stem}.box")}
    ref = {stem: read_picks(d / "ground_truth" / f"{stem}.csv")}
    total = evaluate_picks(picks, ref, methods=("match",), flip_y=4096)[-1]
    assert total["precision"] == pytest.approx(0.858, abs=0.002) and total["recall"] == pytest.approx(0.981, abs=0.002)
    assert evaluate_picks(picks, ref, methods=("match",))[-1]["precision"] < 0.4
