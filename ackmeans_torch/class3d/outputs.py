"""What a 3D classification writes into its run directory (rank zero, each file atomically).

* ``run_class001.mrc`` … the class maps (FSC-weighted, under the reference mask, to Nyquist) and
  ``run_half1_class001_unfil.mrc`` / ``run_half2_…`` the unfiltered half maps, as RELION names
  them (its ``run_it025_class001.mrc``, ``run_it025_half1_class001_unfil.mrc`` without the
  iteration: one set per run);
* ``run_data.star`` — the particles as given (poses, CTF, names) with ``rlnClassNumber``;
  ``images.mrcs`` too when the images were in memory only;
* ``run_model.star`` — RELION's model blocks for 3D: ``model_general``, ``model_classes``
  (map, class distribution, estimated resolution at the half-map FSC 0.143) and one
  ``model_class_N`` per class (the FSC curve, its SSNR);
* ``fsc.png`` (half-map FSC per class with the 0.143 line), ``class_gallery.png`` (per class:
  the central slices and projections along z, y and x, with size and resolution),
  ``class_sizes.png`` (class sizes per round), and ``history.csv`` (per round: % changing, sizes)
  from the checkpoint recorder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ackmeans_torch.classify.run import output_particles
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.eval.plots import plt, save_figure
from ackmeans_torch.io.mrc import write_stack, write_volume
from ackmeans_torch.io.star import write_particles, write_star
from ackmeans_torch.ops.fourier import GOLD_STANDARD_THRESHOLD, NO_RESOLUTION

__all__ = ["write_class3d_outputs", "model_blocks_3d"]


def map_name(k: int, half: int | None = None) -> str:
    """RELION's name of class ``k``'s map (0-based), or of its half map ``half`` (1 or 2)."""
    return f"run_class{k + 1:03d}.mrc" if half is None else \
        f"run_half{half}_class{k + 1:03d}_unfil.mrc"


def model_blocks_3d(result, *, pixel_size: float) -> dict:
    """``run_model.star`` blocks of a 3D classification ``result`` (module docstring)."""
    k, size = len(result.sizes), int(result.maps.shape[-1])
    sizes = result.sizes.numpy().astype(np.int64)
    shells = np.arange(result.fsc.shape[1])
    angstrom = np.where(shells > 0, size * pixel_size / np.maximum(shells, 1), NO_RESOLUTION)
    best = float(np.min(result.resolution)) if k else NO_RESOLUTION
    blocks = {
        "model_general": {
            "rlnReferenceDimensionality": 3, "rlnDataDimensionality": 2,
            "rlnOriginalImageSize": size, "rlnCurrentResolution": best,
            "rlnPixelSize": pixel_size, "rlnNrClasses": k, "rlnNrBodies": 1, "rlnNrGroups": 1,
            "rlnPaddingFactor": 2.0, "rlnIsHelix": 0,
        },
        "model_classes": pd.DataFrame({
            "rlnReferenceImage": [map_name(j) for j in range(k)],
            "rlnClassDistribution": sizes / max(sizes.sum(), 1),
            "rlnEstimatedResolution": result.resolution,
            "rlnOverallFourierCompleteness": 1.0,
        }),
    }
    for j in range(k):
        curve = result.fsc[j]
        blocks[f"model_class_{j + 1}"] = pd.DataFrame({
            "rlnSpectralIndex": shells, "rlnResolution": shells / (size * pixel_size),
            "rlnAngstromResolution": angstrom, "rlnGoldStandardFsc": curve,
            "rlnSsnrMap": np.clip(2 * curve / np.maximum(1 - curve, 1e-6), 0, None),
        })
    return blocks


def _fsc_plot(result, pixel_size: float, path: Path) -> None:
    size = int(result.maps.shape[-1])
    shells = np.arange(result.fsc.shape[1])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for j, curve in enumerate(result.fsc):
        ax.plot(shells[1:] / (size * pixel_size), curve[1:],
                label=f"class {j + 1} ({int(result.sizes[j])}): {result.resolution[j]:.1f} Å")
    ax.axhline(GOLD_STANDARD_THRESHOLD, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("half-map FSC")
    ax.set_ylim(-0.1, 1.02)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _gallery(result, path: Path, title: str) -> None:
    k = len(result.sizes)
    fig, axes = plt.subplots(k, 6, figsize=(7.2, 1.25 * k + 0.4), squeeze=False)
    for j in range(k):
        volume = result.maps[j].numpy()
        c = volume.shape[0] // 2
        panels = [volume[c], volume[:, c], volume[:, :, c],
                  volume.sum(0), volume.sum(1), volume.sum(2)]
        for col, (ax, img) in enumerate(zip(axes[j], panels)):
            ax.set_axis_off()
            lo, hi = np.percentile(img, [1, 99.5]) if np.ptp(img) > 0 else (0.0, 1.0)
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower")
            if col == 0:
                ax.text(0.03, 0.97, f"#{j + 1}  {int(result.sizes[j])}  "
                        f"{result.resolution[j]:.1f} Å", transform=ax.transAxes,
                        color="yellow", fontsize=6, va="top")
    for col, name in enumerate(("slice z", "slice y", "slice x", "proj z", "proj y", "proj x")):
        axes[0][col].set_title(name, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(wspace=0.03, hspace=0.05)
    save_figure(fig, path)


def _sizes_plot(history: list[dict], path: Path) -> None:
    sizes = np.array([h["sizes"] for h in history], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 3))
    for j in range(sizes.shape[1]):
        ax.plot(range(len(sizes)), sizes[:, j], marker=".", label=f"class {j + 1}")
    ax.set_xlabel("round")
    ax.set_ylabel("particles")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def write_class3d_outputs(run_dir: Path, result, source: ImageSource, *, pixel_size: float,
                          title: str = "",
                          project_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write the module docstring's files for ``result`` of ``source``'s particles (image names
    valid from ``project_dir``, default the current directory); returns name → path."""
    run_dir = Path(run_dir)
    project = Path(os.path.abspath(Path.cwd() if project_dir is None else project_dir))
    paths = {}
    for j in range(len(result.sizes)):
        paths[map_name(j)] = run_dir / map_name(j)
        write_volume(paths[map_name(j)], result.maps[j], pixel_size)
        for h in (1, 2):
            paths[map_name(j, h)] = run_dir / map_name(j, h)
            write_volume(paths[map_name(j, h)], result.half_maps[j, h - 1], pixel_size)
    table, in_memory = output_particles(source, run_dir, project)
    if in_memory is not None:
        paths["images.mrcs"] = run_dir / "images.mrcs"
        write_stack(paths["images.mrcs"], in_memory.to_tensor().cpu(), in_memory.pixel_size)
    paths["run_data.star"] = run_dir / "run_data.star"
    write_particles(paths["run_data.star"],
                    table.assign(rlnClassNumber=result.labels.numpy() + 1))
    paths["run_model.star"] = run_dir / "run_model.star"
    write_star(paths["run_model.star"], model_blocks_3d(result, pixel_size=pixel_size))
    for name, draw in (("fsc.png", lambda p: _fsc_plot(result, pixel_size, p)),
                       ("class_gallery.png", lambda p: _gallery(result, p, title)),
                       ("class_sizes.png", lambda p: _sizes_plot(result.history, p))):
        paths[name] = run_dir / name
        draw(paths[name])
    return paths
