"""The picker family: the shared contract (shapes, order, bad input) for every built-in picker,
known answers of the pieces (peaks, NCC, PU loss), recovery of particles on small synthetic
micrographs made here with numpy (dark Gaussian blobs on white noise), and the external adapters
(each skipped with its reason when its program is absent)."""

from __future__ import annotations

import math
import shutil
import sys

import numpy as np
import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.coords import PickSet
from ackmeans_torch.picking.evaluate import match_scores
from ackmeans_torch.pickers.base import find_peaks, label_map
from ackmeans_torch.pickers.blob import BlobPicker
from ackmeans_torch.pickers.cnn import CNNPicker, nnpu_loss
from ackmeans_torch.pickers.external import CommandPicker, ProgramMissing, RelionAutopick, TopazPicker
from ackmeans_torch.pickers.template import TemplatePicker

DIAMETER = 32


def synthetic(seed: int, *, size: int = 384, n: int = 25, noise: float = 1.0) -> tuple[np.ndarray, PickSet]:
    """A micrograph of ``n`` dark Gaussian blobs (σ = diameter/4) at least 1.2 diameters
    apart on white noise, and their true boxes."""
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    while len(centres) < n:
        c = rng.uniform(DIAMETER, size - DIAMETER, 2)
        if all(np.hypot(*(c - o)) > 1.2 * DIAMETER for o in centres):
            centres.append(c)
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size))
    for x, y in centres:
        image -= np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (DIAMETER / 4) ** 2))
    image += rng.normal(0, noise, image.shape)
    xy = np.array(centres)
    return image.astype(np.float32), PickSet(xy, np.full(n, 48.0), np.ones(n))


def blob_template() -> torch.Tensor:
    """One 40 px template: the same Gaussian blob as :func:`synthetic` (positive density)."""
    axis = torch.arange(40.0) - 20
    return torch.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * (DIAMETER / 4) ** 2))[None]


PICKERS = {
    "blob": lambda: BlobPicker(particle_diameter=DIAMETER, threshold=3.0),
    "template": lambda: TemplatePicker(templates=blob_template(), particle_diameter=DIAMETER, threshold=0.2,
                                       angle_step=90),
}


@pytest.mark.parametrize("name", PICKERS)
def test_picker_contract_and_recovery(name):
    """Every built-in picker returns a PickSet of its box size, scores best first, centres inside
    the micrograph, and finds the blobs of an easy synthetic micrograph (precision and recall
    >= 0.9 at half a diameter)."""
    image, truth = synthetic(1)
    picker = PICKERS[name]()
    picks = picker.pick(image)
    assert isinstance(picks, PickSet) and len(picks) > 0
    assert np.all(picks.box_size == 1.5 * DIAMETER)
    assert np.all(np.diff(picks.scores) <= 0)
    assert np.all((picks.centres >= 0) & (picks.centres < image.shape[0]))
    s = match_scores(picks, truth, radius=DIAMETER / 2)
    assert s.precision >= 0.9 and s.recall >= 0.9, (s.precision, s.recall)


@pytest.mark.parametrize("name", PICKERS)
def test_picker_refuses_bad_micrographs(name):
    """A 3D array, NaN pixels, or a micrograph smaller than four particles are one-line input
    errors that name the problem."""
    picker = PICKERS[name]()
    with pytest.raises(InputError, match="2D"):
        picker.pick(np.zeros((2, 64, 64)))
    bad = np.zeros((256, 256), dtype=np.float32)
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        picker.pick(bad)
    with pytest.raises(InputError, match="smaller"):
        picker.pick(np.zeros((8, 8)))


def test_picker_options_are_validated():
    """Keyword checks name the parameter: a negative diameter, an unknown contrast, bad scales."""
    with pytest.raises(InputError, match="particle_diameter"):
        BlobPicker(particle_diameter=-3)
    with pytest.raises(InputError, match="contrast"):
        BlobPicker(particle_diameter=30, contrast="grey")
    with pytest.raises(InputError, match="scales"):
        BlobPicker(particle_diameter=30, scales=[])
    with pytest.raises(InputError, match="templates"):
        TemplatePicker(templates=torch.zeros(3, 4, 5), particle_diameter=30)


def test_find_peaks_known_answer_and_plateau():
    """Two isolated maxima come back best first at their pixels; a flat plateau gives one pick,
    not one per pixel; peaks within the border or below threshold are dropped."""
    m = torch.zeros(50, 60)
    m[20, 30], m[35, 10] = 5.0, 3.0
    m[10:13, 45:48] = 2.0  # plateau
    m[1, 1] = 9.0          # inside the border
    xy, scores = find_peaks(m, radius=4, border=3, threshold=1.0, max_picks=10)
    assert scores.tolist() == [5.0, 3.0, 2.0]
    assert xy[:2].tolist() == [[30, 20], [10, 35]]
    assert 45 <= xy[2, 0] <= 47 and 10 <= xy[2, 1] <= 12
    xy, _ = find_peaks(m, radius=4, border=3, threshold=2.5, max_picks=1)
    assert xy.tolist() == [[30, 20]]


def test_template_ncc_is_one_at_an_embedded_copy():
    """NCC of a micrograph holding an exact (dark) copy of the template is 1 at its centre and
    below 1 elsewhere."""
    image = torch.randn(128, 128, generator=torch.Generator().manual_seed(0)) * 0.01
    t = blob_template()[0]
    image[40:80, 50:90] -= t  # centre (row 60, column 70)
    picker = TemplatePicker(templates=blob_template(), particle_diameter=DIAMETER, angle_step=360)
    picker.particle_diameter = 20.0  # working box 40 px, bin 1: exactly the template's
    ncc = picker.ncc_map((image - image.mean()) / image.std())
    assert ncc[60, 70] == pytest.approx(1.0, abs=1e-3)
    assert ncc.max() <= 1.0 + 1e-4 and int(ncc.argmax()) == 60 * 128 + 70


def test_template_ctf_keys_are_checked():
    """A CTF without its defocus keys is refused with the missing key names."""
    picker = TemplatePicker(templates=blob_template(), particle_diameter=DIAMETER)
    with pytest.raises(InputError, match="rlnDefocusU"):
        picker.working_templates(pixel_size=1.0, ctf={"rlnVoltage": 300.0})


def test_template_from_volume_projects_views():
    """``from_volume`` makes one template per view from the built-in phantom."""
    picker = TemplatePicker.from_volume(volume="phantom", particle_diameter=DIAMETER, n_views=5)
    assert picker.templates.shape == (5, 40, 40)


def test_nnpu_loss_known_values():
    """At zero logits the nnPU risk is π·log 2 + (log 2 − π·log 2) = log 2; with confident,
    correct logits it is near zero; the negative part is clamped at zero."""
    labels = torch.zeros(4, 4)
    labels[0, 0] = 1
    assert float(nnpu_loss(torch.zeros(4, 4), labels, 0.1)) == pytest.approx(math.log(2))
    good = torch.full((4, 4), -20.0)
    good[0, 0] = 20.0
    assert float(nnpu_loss(good, labels, 1 / 16)) < 1e-6
    # all positive logits: R_U(-) = softplus(20) ~ 20 < π R_P(-)? no; with prior 1 the clamp bites
    assert float(nnpu_loss(torch.full((4, 4), 20.0), labels, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_label_map_discs():
    """Positive pixels are the discs of the given radius around each centre, clipped at edges."""
    lab = label_map((10, 12), np.array([[2.0, 3.0], [11.0, 0.0]]), 1.0)
    assert lab[3, 2] == 1 and lab[3, 3] == 1 and lab[4, 3] == 0
    assert lab[0, 11] == 1 and int(lab.sum()) == 5 + 3


@pytest.mark.slow  # one tiny epoch, but the Lightning Trainer starts in 10-30 s on this loaded machine
def test_cnn_untrained_refuses_then_fits_with_the_trainer(tmp_path):
    """An untrained CNN picker refuses to pick; one short Trainer epoch records train and
    validation losses, sets a finite threshold and makes the picker pick; saved weights load
    back into a picker that picks the same."""
    data = [synthetic(s, size=192, n=8) for s in range(2)]
    picker = CNNPicker(particle_diameter=DIAMETER, epochs=1, crops_per_epoch=8, batch_size=8, crop=32, seed=0)
    with pytest.raises(InputError, match="untrained"):
        picker.pick(data[0][0])
    picker.fit([data[0][0]], [data[0][1]], val=([data[1][0]], [data[1][1]]))
    assert picker.trained and len(picker.losses_["train"]) == 1 and len(picker.losses_["val"]) == 1
    assert math.isfinite(picker.threshold)
    picks = picker.pick(data[1][0])
    picker.save(tmp_path / "net.pt")
    again = CNNPicker(particle_diameter=DIAMETER, weights=str(tmp_path / "net.pt"), threshold=picker.threshold)
    assert np.array_equal(again.pick(data[1][0]).centres, picks.centres)


@pytest.mark.slow  # ~20 s of training on this loaded CPU
def test_cnn_learns_from_partial_labels():
    """After a short PU fit on 3 synthetic micrographs labelled with 60% of their particles (the
    prior told the true count, 16), the CNN finds most particles of an unseen micrograph
    (recall and precision >= 0.8), its threshold set on the validation micrograph."""
    data = [synthetic(s, size=256, n=16) for s in range(5)]
    picker = CNNPicker(particle_diameter=DIAMETER, epochs=4, crops_per_epoch=96, crop=48, seed=0,
                       expected_particles=16)
    part = [PickSet(t.centres[:10], t.box_size[:10], t.scores[:10]) for _, t in data]
    picker.fit([d[0] for d in data[:3]], part[:3], val=([data[3][0]], [part[3]]))
    s = match_scores(picker.pick(data[4][0]), data[4][1], radius=DIAMETER / 2)
    assert s.recall >= 0.8 and s.precision >= 0.8, (s.precision, s.recall)


def test_cnn_fit_refuses_bad_training_sets():
    """Picking untrained, no labels, mismatched lengths and crops larger than the micrograph
    are input errors."""
    image, truth = synthetic(0, size=256, n=5)
    picker = CNNPicker(particle_diameter=DIAMETER, epochs=1)
    with pytest.raises(InputError, match="untrained"):
        picker.pick(image)
    with pytest.raises(InputError, match="no labelled"):
        picker.fit([image], [PickSet.empty()])
    with pytest.raises(InputError, match="one per micrograph"):
        picker.fit([image, image], [truth])
    with pytest.raises(InputError, match="crop"):
        CNNPicker(particle_diameter=DIAMETER, crop=200).fit([image], [truth])


def test_command_picker_runs_a_command_and_reads_its_output(tmp_path):
    """The command-template adapter fills {micrograph} {out_dir} {name}, runs the line and
    reads the BOX file it wrote (lower-left corners -> centres, threshold and order applied)."""
    script = tmp_path / "pick.py"
    script.write_text("import sys, mrcfile\n"
                      "m = mrcfile.open(sys.argv[1]).data\n"
                      "open(sys.argv[2] + '/' + sys.argv[3] + '.box', 'w').write("
                      "f'10 20 40 40 0.2\\n{m.shape[1] - 50} 30 40 40 0.9\\n1 1 40 40 0.01\\n')\n")
    picker = CommandPicker(command=f"{sys.executable} {script} {{micrograph}} {{out_dir}} {{name}}",
                           output="{out_dir}/{name}.box", particle_diameter=30, box_size=40, threshold=0.1)
    picks = picker.pick(np.zeros((100, 120), dtype=np.float32), name="mic_7")
    assert picks.centres.tolist() == [[90.0, 50.0], [30.0, 40.0]] and picks.scores.tolist() == [0.9, 0.2]


def test_command_picker_errors():
    """A bad placeholder, a missing program and a failing command are one-line errors."""
    with pytest.raises(InputError, match="placeholder"):
        CommandPicker(command="x {mic}", output="{out_dir}/a.box", particle_diameter=30)
    with pytest.raises(ProgramMissing, match="not on PATH"):
        CommandPicker(command="no-such-picker-program {micrograph}", output="{out_dir}/a.box",
                      particle_diameter=30).pick(np.zeros((64, 64)))
    with pytest.raises(OSError, match="exit code 3"):
        CommandPicker(command=f"{sys.executable} -c 'import sys; sys.exit(3)'", output="{out_dir}/a.box",
                      particle_diameter=30).pick(np.zeros((64, 64)))


@pytest.mark.relion
def test_relion_autopick_log_finds_blobs():
    """relion_autopick in LoG mode on a synthetic micrograph (written as MRC by the adapter)
    finds most blobs (recall >= 0.7 within half a diameter)."""
    if shutil.which("relion_autopick") is None:
        pytest.skip("relion_autopick is not installed (Debian: apt-get install relion)")
    image, truth = synthetic(2, size=512, n=40, noise=0.5)
    picks = RelionAutopick(particle_diameter=DIAMETER).pick(image, pixel_size=2.0, name="mic")
    s = match_scores(picks, truth, radius=DIAMETER / 2)
    assert s.recall >= 0.7, (s.precision, s.recall)


def test_topaz_adapter_reports_missing_program():
    """Without topaz on PATH the adapter says how to install it (with it, it would run)."""
    if shutil.which("topaz") is not None:
        pytest.skip("topaz is installed: its run is exercised by scripts/bench_pickers.py")
    with pytest.raises(ProgramMissing, match="topaz-em"):
        TopazPicker(particle_diameter=DIAMETER).pick(np.zeros((128, 128)))
