"""The library front door (classify/run.py): a few lines of Python classify a stack with the same
labels as the command line for the same seed, write nothing without an out_dir, and refuse bad
requests before any image is read."""

from __future__ import annotations

import numpy as np
import pytest
import starfile
import torch

from ackmeans_torch import (
    MRA,
    MSAMRA,
    AlignOptions,
    ClusterOptions,
    QuadraticPenalty,
    SimulatedSource,
    Simulation,
    open_source,
    run_classification,
)
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.errors import InputError
from test_classify_distributed import TINY, classify_in_process

SPEC = Simulation(n_centres=3, per_centre=8, phantom_box=32)
OPTIONS = ClusterOptions(n_classes=3, max_iter=3, sigma0=0.0, batch_size=4)
ALIGN = AlignOptions(n_angles=36, max_shift=1.0)


def test_python_run_gives_the_labels_of_the_command_line(tmp_path):
    """The README's lines on the TINY set equal ``ackmeans-torch classify`` with the same
    settings and seed: labels, mirrors and psi identical."""
    torch.set_num_threads(1)
    cli = tmp_path / "cli"
    classify_in_process(cli, *TINY)
    run = run_classification(SimulatedSource.from_spec(SPEC, seed=0), pipeline=MRA(),
                             rule=QuadraticPenalty(beta=0.5), options=OPTIONS, align=ALIGN,
                             out_dir=tmp_path / "lib")
    written = starfile.read(cli / "particles.star")["particles"]
    assert np.array_equal(written["rlnClassNumber"].to_numpy(), run.result.labels.numpy() + 1)
    ours = starfile.read(tmp_path / "lib" / "particles.star")["particles"]
    assert np.array_equal(ours["rlnIsFlip"], written["rlnIsFlip"])
    np.testing.assert_array_equal(ours["rlnAnglePsi"], written["rlnAnglePsi"])
    assert run.summary["label"] == "MRA / ACK-means, β = 0.5" and run.summary["n_images"] == 24


def test_python_run_on_a_stack_file_writes_nothing_without_out_dir(tmp_path, monkeypatch):
    """A stack read from disk, no out_dir: a result comes back and no file is made anywhere
    (the working directory stays empty)."""
    from ackmeans_torch.io.mrc import write_stack

    images, _ = SPEC.run(seed=1)
    write_stack(tmp_path / "stack.mrcs", images, 4.0)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(tmp_path.rglob("*"))
    run = run_classification(open_source(tmp_path / "stack.mrcs"), pipeline=MRA(),
                             rule=QuadraticPenalty(), options=OPTIONS, align=ALIGN)
    assert run.out_dir is None and int(run.result.sizes.sum()) == 24
    assert sorted(tmp_path.rglob("*")) == before


class _Untouchable(ImageSource):
    """A source whose images must not be read."""

    pixel_size, box_size = 4.0, 32

    def __init__(self, n: int) -> None:
        import pandas as pd

        self.particles = pd.DataFrame(index=range(n))

    def images(self, indices):
        raise AssertionError("images were read before the request was refused")


@pytest.mark.parametrize("kwargs, message", [
    ({"options": ClusterOptions(n_classes=30)}, "n_classes=30 must be <= the 24 items"),
    ({"pipeline": MSAMRA(), "resume": "elsewhere"}, "cannot resume"),
    ({"resume": True}, "resume=true needs the run's out_dir"),
    ({"wiener_epsilon": 0.0}, "wiener_epsilon=0.0 must be a number"),
])
def test_bad_requests_are_refused_before_any_image_is_read(kwargs, message):
    settings = {"pipeline": MRA(), "rule": QuadraticPenalty(), "options": OPTIONS, **kwargs}
    with pytest.raises(InputError, match=message):
        run_classification(_Untouchable(24), **settings)
