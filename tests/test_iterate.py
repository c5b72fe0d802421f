"""The iterative loop: REPIC's defocus-binned split (known answers, no crash without defocus,
every micrograph once), rounds with retraining on the consensus, scores against the truth,
resume of finished rounds, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ackmeans_torch.errors import InputError
from ackmeans_torch.micrographs.io import Micrograph
from ackmeans_torch.picking.iterate import LoopOptions, defocus_split, mean_defocus, run_loop
from ackmeans_torch.pickers.base import TrainablePicker
from ackmeans_torch.pickers.blob import BlobPicker
from ackmeans_torch.pickers.template import TemplatePicker

from test_pickers import DIAMETER, blob_template, synthetic


def test_defocus_split_takes_validation_across_the_bins():
    """Nine micrographs with defocus 1..9 (shuffled names) in 3 bins: the 3 validation
    micrographs are one low, one medium and one high; with train_fraction 0.5 three of the six
    others train, and every micrograph is in exactly one subset."""
    names = [f"m{i}" for i in (5, 2, 8, 1, 9, 3, 7, 4, 6)]
    defocus = {n: float(n[1:]) * 1e4 for n in names}
    split = defocus_split(names, defocus, n_val=3, train_fraction=0.5, n_bins=3, seed=4)
    val = sorted(int(n[1:]) for n, part in split.items() if part == "val")
    assert [(v - 1) // 3 for v in val] == [0, 1, 2]
    assert sorted(split) == sorted(names)
    counts = pd.Series(split).value_counts().to_dict()
    assert counts == {"val": 3, "train": 3, "test": 3}


def test_defocus_split_without_defocus_uses_equal_random_bins():
    """REPIC's script stops without a defocus file; here missing defocus deals the micrographs
    into equal random bins: every one is assigned, the seed fixes the split."""
    names = [f"m{i}" for i in range(10)]
    a = defocus_split(names, None, n_val=3, train_fraction=0.5, seed=1)
    b = defocus_split(names, {n: None for n in names}, n_val=3, train_fraction=0.5, seed=1)
    assert a == b and sorted(a) == names
    assert list(a.values()).count("val") == 3 and list(a.values()).count("train") == 4


def test_defocus_split_bad_input():
    """Too few micrographs or too many validation micrographs are input errors."""
    with pytest.raises(InputError, match="at least 2"):
        defocus_split(["a"], None, n_val=0, train_fraction=0.2)
    with pytest.raises(InputError, match="n_val"):
        defocus_split(["a", "b"], None, n_val=2, train_fraction=0.2)
    assert mean_defocus({"rlnDefocusU": 1.0, "rlnDefocusV": 3.0}) == 2.0 and mean_defocus(None) is None


class MemoPicker(TrainablePicker):
    """A stand-in trainable picker: it picks as the blob picker does once fitted, and counts its
    fits (so the loop's retraining and resume are visible)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fits, self.trained, self._inner = 0, False, BlobPicker(**kwargs)

    def fit(self, micrographs, boxes, *, val=None):
        assert len(micrographs) == len(boxes) and all(len(b) for b in boxes)
        self.fits += 1
        self.trained = True
        return self

    def _pick(self, image, *, pixel_size, ctf):
        return self._inner._pick(image, pixel_size=pixel_size, ctf=ctf)


def _micrographs(n=4):
    mics, truth = [], {}
    for i in range(n):
        image, t = synthetic(10 + i, size=256, n=12)
        ctf = {"rlnDefocusU": 1e4 * (i + 1), "rlnDefocusV": 1e4 * (i + 1), "rlnDefocusAngle": 0.0, "rlnVoltage": 300.0,
               "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}
        mics.append(Micrograph(f"mic_{i}", None, 1.0, ctf, image))
        truth[f"mic_{i}"] = t
    return mics, truth


def _pickers():
    return {"blob": BlobPicker(particle_diameter=DIAMETER, threshold=3.0),
            "template": TemplatePicker(templates=blob_template(), particle_diameter=DIAMETER, threshold=0.2,
                                       angle_step=90, apply_ctf=False),
            "memo": MemoPicker(particle_diameter=DIAMETER, threshold=3.0)}


def test_loop_rounds_scores_outputs_and_resume(tmp_path):
    """Two rounds on 4 synthetic micrographs: round 0 has the two ready pickers, round 1 adds
    the retrained one (fitted once per round), scores for every picker and the consensus on the
    test set (the consensus of easy blobs: precision and recall >= 0.9), round folders, the
    table and the plot; a second call on the same out_dir reads both rounds back without
    fitting, and a third with rounds=2 only computes round 2."""
    mics, truth = _micrographs()
    pickers = _pickers()
    options = LoopOptions(rounds=1, n_val=1, train_fraction=0.5, min_pickers=2)
    result = run_loop(mics, pickers, options=options, truth=truth, out_dir=tmp_path)
    assert [list(r.picks) for r in result.rounds] == [["blob", "template"], ["blob", "template", "memo"]]
    assert pickers["memo"].fits == 1
    table = result.table()
    assert set(table.picker) == {"blob", "template", "memo", "consensus"} and set(table.subset) == {"test"}
    last = table[(table["round"] == 1) & (table.picker == "consensus")].iloc[0]
    assert last.precision >= 0.9 and last.recall >= 0.9
    for name in ("round_00/consensus/box/mic_0.box", "round_01/picks/memo/mic_3.csv", "scores.tsv", "scores.png",
                 "split.tsv", "round_01/round.json"):
        assert (tmp_path / name).is_file(), name
    assert "train_memo" in json.loads((tmp_path / "round_01" / "round.json").read_text())["seconds"]

    again = _pickers()
    back = run_loop(mics, again, options=options, truth=truth, out_dir=tmp_path)
    assert again["memo"].fits == 0 and all(r.resumed for r in back.rounds)
    for a, b in zip(result.rounds, back.rounds):
        for stem in a.consensus:
            assert np.allclose(a.consensus[stem].centres, b.consensus[stem].centres)
    more = _pickers()
    longer = run_loop(mics, more, options=LoopOptions(rounds=2, n_val=1, train_fraction=0.5, min_pickers=2),
                      truth=truth, out_dir=tmp_path)
    assert more["memo"].fits == 1 and [r.resumed for r in longer.rounds] == [True, True, False]


def test_loop_bad_input():
    """Fewer than two ready pickers, rounds without a trainable picker and duplicate names are
    input errors that say what to change."""
    mics, _ = _micrographs(2)
    picker = BlobPicker(particle_diameter=DIAMETER)
    with pytest.raises(InputError, match="at least 2 pickers"):
        run_loop(mics, {"blob": picker, "memo": MemoPicker(particle_diameter=DIAMETER)},
                 options=LoopOptions(rounds=1, n_val=1))
    with pytest.raises(InputError, match="rounds=0"):
        run_loop(mics, {"a": picker, "b": picker}, options=LoopOptions(rounds=1, n_val=1))
    with pytest.raises(InputError, match="share a name"):
        run_loop([mics[0], mics[0]], {"a": picker, "b": picker}, options=LoopOptions(rounds=0, n_val=1))
    with pytest.raises(InputError, match="rounds"):
        LoopOptions(rounds=-1)
