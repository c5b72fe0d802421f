"""A classification's result and its RELION-ready files.

Files (all written atomically into the run directory):

* ``particles.star`` — RELION 4 (optics + particles), every input column kept in its place,
  labels RELION does not know included, plus ``rlnClassNumber`` (1-based), ``rlnAnglePsi``,
  ``rlnOriginXAngst/YAngst`` (the in-plane pose of the image in its class, RELION convention, see
  :func:`pose_to_relion`; they replace the input's values), ``rlnIsFlip`` (mirror) and
  ``rlnAckMeansDistance`` (the aligned distance to the class average; RELION keeps unknown
  labels with a warning). The pose columns are those of RELION 3.1.3's own Class2D
  ``_data.star`` (run on a simulated set): it keeps the input's ``rlnAngleRot``/``rlnAngleTilt``
  as they were and overwrites ``rlnAnglePsi`` and the origins with its 2D alignment, so a row's
  angles are not one 3D pose, in RELION's file or in ours; the input's rot and tilt are kept
  under their names because RELION keeps them there and tools that follow Class2D expect them.
  RELION adds ``rlnAngleRot = rlnAngleTilt = 0`` when the input has none; we add nothing, as a
  zero is no measured angle and no 2D tool reads them;
* ``class_averages.mrcs`` — K averages, pixel size set; ``classes.star`` — per class its
  number, size, fraction (``rlnClassDistribution``) and the image in the stack;
* ``history.csv`` — per iteration J, σ, λ, d_c, empty classes, sizes;
* ``class_gallery.png`` and ``class_sizes.png`` (and ``angular_distances.png`` when the truth
  is known, written by the caller with ``eval/``);
* beside them, a RELION Class2D job's files, so RELION's Subset selection (which in 3.1 takes a
  ``_model.star`` and reads the ``_data.star`` of the same root) and MlModel::read take the run:
  ``run_data.star`` (``particles.star`` without the labels this module adds that RELION does
  not know; the input's columns all kept, unknown ones too, as in RELION's),
  ``run_classes.mrcs`` (the averages) and ``run_model.star`` (see :func:`model_blocks`). Image
  names in them hold from the project directory RELION runs from, as in ``particles.star``.

The per-class resolution is a half-set FRC: each class's members are split into two random halves
(seeded), each half averaged in the class frame, and the resolution is that of the last shell
before the FRC first drops below 0.143 (Nyquist when it never does; 999 Å for a class with fewer
than two members, RELION's value for none). ``rlnAccuracyRotations`` and
``rlnAccuracyTranslationsAngst`` are the search steps (360°/``n_angles``, ``shift_step`` in Å), not
RELION's estimate of the pose error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ackmeans_torch.classify.common import Classification
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.eval.plots import class_gallery, ranked_sizes
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.io.mrc import write_stack
from ackmeans_torch.io.star import write_particles, write_star
from ackmeans_torch.ops.align import AlignOptions
from ackmeans_torch.ops.fourier import (
    GOLD_STANDARD_THRESHOLD as FRC_THRESHOLD,
    NO_RESOLUTION,
    fft2c,
    resolution_at,
)
from ackmeans_torch.ops.polar import circular_mask
from ackmeans_torch.ops.projection import relion_origin_to_shift
from ackmeans_torch.ops.transform import Poses

def pose_to_relion(angle: Tensor, shift: Tensor, pixel_size: float) -> dict[str, np.ndarray]:
    """Aligner pose → RELION columns. The aligner's ``T = S_t ∘ R_a`` moves the class average
    onto the image; RELION's in-plane ``psi`` turns its reference the other way (measured with
    the Fourier projector: psi = 40° is a = −40°, tests/test_classify_outputs.py), and its origin
    is minus the content shift (``ops.projection.relion_origin_to_shift``). psi in (−180, 180]."""
    psi = -torch.rad2deg(angle.double())
    psi = torch.remainder(psi + 180.0, 360.0) - 180.0
    psi = torch.where(psi == -180.0, torch.full_like(psi, 180.0), psi)
    origin = relion_origin_to_shift(shift.double()) * pixel_size
    return {"rlnAnglePsi": psi.cpu().numpy(), "rlnOriginXAngst": origin[:, 0].cpu().numpy(),
            "rlnOriginYAngst": origin[:, 1].cpu().numpy()}


def history_frame(history: list[dict]) -> pd.DataFrame:
    """Per-iteration figures as a table (sizes as a JSON list per row)."""
    rows = [{**{k: v for k, v in h.items() if k != "sizes"}, "sizes": json.dumps(h["sizes"])}
            for h in history]
    return pd.DataFrame(rows)


@dataclass
class HalfSets:
    """Per class: ``frc (K, S)`` between its two half averages at shells 0..S−1 (S = L//2 + 1),
    ``resolution (K,)`` in Å (module docstring), ``power (K, S)`` of the class average per
    Fourier pixel and ``noise (S,)`` the power of the members' residuals to their class average
    per Fourier pixel (``ops.fourier.fft2c`` scale)."""

    frc: np.ndarray
    resolution: np.ndarray
    power: np.ndarray
    noise: np.ndarray


def _shells(size: int, device) -> Tensor:
    """``(L, L)`` integer shell (rounded radius, Fourier px) of each centred frequency."""
    axis = torch.arange(size, device=device) - size // 2
    radius = torch.sqrt((axis[:, None] ** 2 + axis[None, :] ** 2).double())
    return torch.round(radius).long()


def half_sets(prepared: ImageSource, labels: Tensor, poses: Poses, n_classes: int, *, seed: int,
              chunk_size: int = 1024) -> HalfSets:
    """Half-set FRC of every class of ``prepared`` (preprocessed images, ``(N, L, L)``) with
    ``labels (N,)`` 0-based and ``poses`` in their class; ``seed`` draws the halves."""
    size, device, pixel = prepared.box_size, prepared.device, prepared.pixel_size
    labels = labels.cpu().long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    order = order[torch.sort(labels[order], stable=True).indices]
    counts = torch.bincount(labels, minlength=n_classes)
    starts = torch.cumsum(counts, 0) - counts
    half = torch.empty_like(labels)
    half[order] = (torch.arange(len(labels)) - starts[labels[order]]) % 2
    mask = circular_mask(size, prepared.mask_radius, device=device)
    sums = torch.zeros(2 * n_classes, size, size, dtype=torch.float64, device=device)
    power = torch.zeros(size, size, dtype=torch.float64, device=device)
    for start in range(0, len(labels), chunk_size):
        index = torch.arange(start, min(start + chunk_size, len(labels)))
        aligned = poses.select(index).to(device).to_class_frame(prepared.images(index.numpy()))
        aligned = (aligned * mask).double()
        sums.index_add_(0, (2 * labels[index] + half[index]).to(device), aligned)
        power += (fft2c(aligned).abs() ** 2).sum(0)
    halves = torch.bincount(2 * labels + half, minlength=2 * n_classes).to(sums)
    spectra = fft2c(sums / halves.clamp_min(1)[:, None, None]).reshape(n_classes, 2, size, size)
    mean = fft2c(sums.reshape(n_classes, 2, size, size).sum(1)
                 / counts.clamp_min(1).to(sums)[:, None, None])
    shells = _shells(size, device).reshape(-1)
    n_shells = size // 2 + 1
    inside = shells < n_shells

    def per_shell(values: Tensor) -> Tensor:
        flat = values.reshape(*values.shape[:-2], -1)[..., inside]
        out = flat.new_zeros(*flat.shape[:-1], n_shells)
        return out.index_add_(-1, shells[inside], flat)

    cross = per_shell((spectra[:, 0] * spectra[:, 1].conj()).real)
    norm = torch.sqrt(per_shell(spectra[:, 0].abs() ** 2) * per_shell(spectra[:, 1].abs() ** 2))
    frc = torch.where(norm > 0, cross / norm.clamp_min(1e-300), torch.zeros_like(cross))
    pixels = per_shell(torch.ones(size, size, dtype=torch.float64, device=device))
    class_power = per_shell(mean.abs() ** 2) / pixels
    residual = power - (counts.to(sums)[:, None, None] * mean.abs() ** 2).sum(0)
    noise = per_shell(residual.clamp_min(0)) / pixels / max(len(labels), 1)
    frc = frc.cpu().numpy()
    resolution = resolution_at(frc, box_size=size, pixel_size=pixel, threshold=FRC_THRESHOLD)
    two_halves = (halves.reshape(n_classes, 2) > 0).all(1).cpu().numpy()
    resolution = np.where(two_halves, resolution, NO_RESOLUTION)
    return HalfSets(frc=np.where(two_halves[:, None], frc, 0.0), resolution=resolution,
                    power=class_power.cpu().numpy(), noise=noise.cpu().numpy())


def model_blocks(result: Classification, particles: pd.DataFrame, *, pixel_size: float,
                 align: AlignOptions, halves: HalfSets, reference_stack: str) -> dict:
    """The blocks of a RELION 3.1 Class2D ``_model.star`` for ``result`` on ``particles`` (the
    written table, origins in Å): ``model_general``, ``model_classes``, ``model_groups``, one
    ``model_class_N`` per class and ``model_group_1`` — every label MlModel::read requires.

    Real values: sizes and class distribution, the box and pixel size of the averages, the
    alignment's resolution limit (``rlnCurrentResolution``, Å at the largest radius searched),
    the RMS origin per axis (``rlnSigmaOffsetsAngst``), each class's mean origin (its offset
    prior), the half-set FRC, resolution and spectra. Fixed, as RELION would hold them for a
    hard-assignment run without its regularisation: ``rlnAveragePmax`` 1, ``rlnLogLikelihood`` 0,
    ``rlnNormCorrectionAverage`` 1, ``rlnOverallFourierCompleteness`` 1 (every in-plane angle is
    searched), no orientational priors; RELION's defaults for ``rlnPaddingFactor`` 2,
    ``rlnFourierSpaceInterpolator`` 1, ``rlnMinRadiusNnInterpolation`` 10 and
    ``rlnTau2FudgeFactor`` 2. ``reference_stack``: the averages' stack as RELION must name it.
    """
    size = int(result.averages.shape[-1])
    n_classes = int(result.sizes.numel())
    sizes = result.sizes.cpu().numpy().astype(np.int64)
    radius = align.max_radius if align.max_radius is not None else size // 2 - 1
    origins = particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=np.float64)
    labels = result.labels.cpu().numpy()
    prior = np.zeros((n_classes, 2))
    np.add.at(prior, labels, origins)
    prior /= np.maximum(sizes, 1)[:, None]
    general = {
        "rlnReferenceDimensionality": 2, "rlnDataDimensionality": 2,
        "rlnOriginalImageSize": size, "rlnCurrentResolution": size * pixel_size / radius,
        "rlnCurrentImageSize": min(size, 2 * radius + 2), "rlnPaddingFactor": 2.0,
        "rlnIsHelix": 0, "rlnFourierSpaceInterpolator": 1, "rlnMinRadiusNnInterpolation": 10,
        "rlnPixelSize": pixel_size, "rlnNrClasses": n_classes, "rlnNrBodies": 1,
        "rlnNrGroups": 1, "rlnTau2FudgeFactor": 2.0, "rlnNormCorrectionAverage": 1.0,
        "rlnSigmaOffsetsAngst": float(np.sqrt(np.mean(origins ** 2))) if len(origins) else 0.0,
        "rlnOrientationalPriorMode": 0, "rlnSigmaPriorRotAngle": 0.0,
        "rlnSigmaPriorTiltAngle": 0.0, "rlnSigmaPriorPsiAngle": 0.0, "rlnLogLikelihood": 0.0,
        "rlnAveragePmax": 1.0,
    }
    classes = pd.DataFrame({
        "rlnReferenceImage": [f"{j + 1:06d}@{reference_stack}" for j in range(n_classes)],
        "rlnClassDistribution": sizes / max(sizes.sum(), 1),
        "rlnAccuracyRotations": 360.0 / align.n_angles,
        "rlnAccuracyTranslationsAngst": align.shift_step * pixel_size,
        "rlnEstimatedResolution": halves.resolution,
        "rlnOverallFourierCompleteness": 1.0,
        "rlnClassPriorOffsetX": prior[:, 0], "rlnClassPriorOffsetY": prior[:, 1],
    })
    shells = np.arange(halves.frc.shape[1])
    inverse = shells / (size * pixel_size)
    angstrom = np.where(shells > 0, size * pixel_size / np.maximum(shells, 1), NO_RESOLUTION)
    blocks = {"model_general": general, "model_classes": classes,
              "model_groups": pd.DataFrame({
                  "rlnGroupNumber": [1], "rlnGroupName": ["group_1"],
                  "rlnGroupNrParticles": [len(labels)], "rlnGroupScaleCorrection": [1.0]})}
    for j in range(n_classes):
        frc = halves.frc[j]
        blocks[f"model_class_{j + 1}"] = pd.DataFrame({
            "rlnSpectralIndex": shells, "rlnResolution": inverse,
            "rlnAngstromResolution": angstrom,
            "rlnSsnrMap": np.clip(2 * frc / np.maximum(1 - frc, 1e-6), 0, None),
            "rlnGoldStandardFsc": frc, "rlnFourierCompleteness": 1.0,
            "rlnReferenceSigma2": halves.power[j], "rlnReferenceTau2": halves.power[j],
            "rlnSpectralOrientabilityContribution": 0.0,
        })
    blocks["model_group_1"] = pd.DataFrame({
        "rlnSpectralIndex": shells, "rlnResolution": inverse, "rlnSigma2Noise": halves.noise})
    return blocks


def write_outputs(run_dir: Path, result: Classification, particles: pd.DataFrame, *,
                  pixel_size: float, title: str = "",
                  images: ImageSource | None = None, prepared: ImageSource | None = None,
                  align: AlignOptions | None = None, seed: int = 0,
                  project_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write every file of the module docstring for ``result`` on ``particles`` (the input table,
    one row per image, image names valid from ``project_dir``, default the current directory).
    ``images``: a source held in memory only, whose images are written as ``images.mrcs`` (the
    names ``particles`` gives them). ``prepared``: the preprocessed images the result was made
    from, for the half-set FRC (None: every class gets 999 Å); ``align``: the search it used
    (default :class:`AlignOptions`); ``seed``: draws the half sets. Returns name → path."""
    run_dir = Path(run_dir)
    project = os.path.abspath(Path.cwd() if project_dir is None else project_dir)
    align = align or AlignOptions()
    paths = {name: run_dir / name for name in
             ("particles.star", "class_averages.mrcs", "classes.star", "history.csv",
              "class_gallery.png", "class_sizes.png", "run_data.star", "run_model.star",
              "run_classes.mrcs")}
    if images is not None:
        paths["images.mrcs"] = run_dir / "images.mrcs"
        write_stack(paths["images.mrcs"], images.to_tensor().cpu(), images.pixel_size)
    averages = result.averages.detach().float().cpu()
    sizes = result.sizes.cpu().numpy()
    poses = result.poses
    table = particles.reset_index(drop=True).assign(
        rlnClassNumber=result.labels.cpu().numpy() + 1,
        rlnIsFlip=poses.mirror.cpu().numpy().astype(int),
        rlnAckMeansDistance=poses.distance.double().cpu().numpy(),
        **pose_to_relion(poses.angle, poses.shift, pixel_size),
    )
    # the pose columns now refer to the class averages' box and pixel size
    table = table.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in table])
    write_particles(paths["particles.star"], table)
    write_stack(paths["class_averages.mrcs"], averages, pixel_size)
    classes = pd.DataFrame({
        "rlnReferenceImage": [f"{j + 1:06d}@class_averages.mrcs" for j in range(len(sizes))],
        "rlnClassNumber": np.arange(1, len(sizes) + 1),
        "rlnClassSize": sizes,
        "rlnClassDistribution": sizes / max(sizes.sum(), 1),
    })
    write_star(paths["classes.star"], {"model_classes": classes}, float_format="%.6g")
    # RELION knows neither label; a mirrored pose has no RELION 2D equivalent, so rlnIsFlip stays
    # only when some image is mirrored
    relion = table.drop(columns=["rlnAckMeansDistance", *(
        [] if bool(poses.mirror.any()) else ["rlnIsFlip"])])
    write_particles(paths["run_data.star"], relion)
    write_stack(paths["run_classes.mrcs"], averages, pixel_size)
    if prepared is not None:
        halves = half_sets(prepared, result.labels, poses, len(sizes), seed=seed)
    else:
        shells = averages.shape[-1] // 2 + 1
        halves = HalfSets(frc=np.zeros((len(sizes), shells)),
                          resolution=np.full(len(sizes), NO_RESOLUTION),
                          power=np.zeros((len(sizes), shells)), noise=np.zeros(shells))
    stack = os.path.relpath(os.path.abspath(paths["run_classes.mrcs"]), project)
    write_star(paths["run_model.star"], model_blocks(
        result, table, pixel_size=pixel_size, align=align, halves=halves,
        reference_stack=stack), float_format="%.6g")
    with atomic_output(paths["history.csv"]) as tmp:
        history_frame(result.history).to_csv(tmp, index=False)
    class_gallery(averages.numpy(), sizes, paths["class_gallery.png"], title=title or None)
    ranked_sizes({title or "run": sizes}, paths["class_sizes.png"])
    return paths
