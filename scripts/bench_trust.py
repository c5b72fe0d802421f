"""Benchmark of the trust tools (``ackmeans_torch/trust``) on simulated 2D sets with truth.

Sets (the built-in phantom, ``--box`` px, SNR ``--snr``, no CTF):

* discrete: 4 well-separated orientation centres (the simulator's half-sphere centres) as the
  4 states, ``--per-state`` images each, 5° spread (goal: 4 leaves, each ≥ 90 % one state);
* homogeneous: one centre, ``4 x --per-state`` images, 5° spread (goal: no accepted split);
* continuous: the same number of views spread uniformly along one great-circle arc (tilt 0–90°
  at rot 0, psi uniform): a continuum, the 2D analogue of a hinge angle (goal: flagged
  continuous, or not split, never cut into ever smaller classes).

``--dimension 3d``: the same goals on 3D classification with known poses
(``trust/classifier.py::Classify3D``, ``init`` and resolution pinned below) of sets from
``sim/hetero.py``: the built-in phantom at 32 px, 4 Å, CTF, SNR ``--snr`` (1 by default in 3D),
pose noise 0.5° / 0.25 px (small enough that assignment by the true maps is right for ~97 % of
the particles, so the states can be separated at all), ``--particles`` per set:

* discrete: 4 equal states of two subunits, each present or absent (the simulator's domain,
  radius 0.2 of the box, ~15 % of the mass, and a second domain at (0.25, 0, 0), radius 0.12,
  ~9 %): two independent compositional changes. (4 states of one domain, turned by 0°, ±60°
  and absent, are not separated reliably by 3D classification of 1,200 particles: the runs
  stop in different local optima, 77–94 % right against 97 % for the true maps, so their
  splits are rarely reproducible; see the README);
* homogeneous: one state (both subunits present);
* continuous: one state whose domain's hinge angle is uniform over ``--spread`` degrees (1°
  bins); the truth column for purity is the angle decile;
* real (with ``../shared/data``): the 70S ribosome map (a real reconstruction, 5 Å/px, Fourier
  cropped to 32 px, 10.2 Å/px; classified to 24 Å) imaged the same way as one homogeneous
  state (goal: no accepted split). The shared RELION projections of that map are 4 images per
  set, too few to split, so the map itself is imaged here;

and ``parallel``: ``reproduce`` with K = 4 on the discrete set for R in ``--replicates`` with 1
and 2 worker processes (``trust/parallel.py``), checking that both give the same labels.

Rows: ``split`` on each set for ``--seeds`` seeds (leaves, purity of the leaves against the
states, accepted splits, continuous flags, time), and ``reproduce`` on the discrete set with K = 4
and the over-split K = 8, for R in ``--replicates`` (median stability, pairwise ARI, time). Each
row carries the torch thread count and the load average.

    OMP_NUM_THREADS=1 python scripts/bench_trust.py                  # the README table (2D)
    OMP_NUM_THREADS=1 python scripts/bench_trust.py --seeds 2 --per-state 40   # a quick look
    OMP_NUM_THREADS=1 python scripts/bench_trust.py --dimension 3d   # the README table (3D)
    OMP_NUM_THREADS=1 python scripts/bench_trust.py --dimension 3d --sets parallel --replicates 2 4
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.class3d.run import Class3DOptions
from ackmeans_torch.classify.mra import MRA
from ackmeans_torch.cluster.engine import ConvergenceWarning
from ackmeans_torch.cluster.options import ClusterOptions
from ackmeans_torch.cluster.penalties import QuadraticPenalty
from ackmeans_torch.data.simulated import Simulation, SimulatedSource
from ackmeans_torch.data.source import ArraySource
from ackmeans_torch.ops.fourier import fourier_crop_volume, ifft2c
from ackmeans_torch.ops.projection import FourierProjector
from ackmeans_torch.ops.rotations import euler_to_matrix
from ackmeans_torch.sim.noise import add_gaussian_noise, noise_sigma
from ackmeans_torch.sim.hetero import HeteroSimulation, simulate_hetero
from ackmeans_torch.sim.volume import phantom
from ackmeans_torch.trust.classifier import Classify2D, Classify3D
from ackmeans_torch.trust.reproduce import reproduce
from ackmeans_torch.trust.split import SplitOptions, exhaustive_split


def discrete(n_states: int, per_state: int, box: int, snr: float, seed: int) -> SimulatedSource:
    return SimulatedSource.from_spec(
        Simulation(n_centres=n_states, per_centre=per_state, box_size=box, snr=snr, ctf=False),
        seed=seed)


def arc(n: int, box: int, snr: float, seed: int) -> SimulatedSource:
    """``n`` phantom views with tilt uniform in [0°, 90°] at rot 0 and psi uniform; the truth
    column holds the tilt decile (1..10) for the purity figure."""
    gen = torch.Generator().manual_seed(seed)
    volume = fourier_crop_volume(phantom(64), box)
    tilt = torch.rand(n, generator=gen, dtype=torch.float64) * 90.0
    psi = torch.rand(n, generator=gen, dtype=torch.float64) * 360.0
    angles = torch.stack([torch.zeros(n, dtype=torch.float64), tilt, psi], 1)
    clean = ifft2c(FourierProjector(volume).spectra(euler_to_matrix(angles).float())).real
    images = add_gaussian_noise(clean, noise_sigma(clean, snr), generator=gen)
    pixel = 4.0 * 64 / box
    table = pd.DataFrame({"rlnAngleRot": 0.0, "rlnAngleTilt": tilt.numpy(),
                          "rlnAnglePsi": psi.numpy(), "rlnImagePixelSize": pixel,
                          "rlnImageSize": box, "rlnOpticsGroup": 1,
                          "rlnBeamTiltClass": np.minimum(tilt.numpy() // 9, 9).astype(int) + 1})
    return SimulatedSource(images, table, pixel_size=pixel)


def classifier(source, max_iter: int) -> Classify2D:
    return Classify2D(source, pipeline=MRA(), rule=QuadraticPenalty(beta=0.5),
                      options=ClusterOptions(n_classes=2, max_iter=max_iter))


#: the shared real map of the ``real`` 3D set (README of ``../shared/data``: 5 Å/px)
RIBOSOME = (Path(__file__).resolve().parents[2] / "shared" / "data" / "volumes"
            / "ribosome70S_65px.mrc")


def hetero(args, seed: int, resolution: float = 12.0, **states) -> tuple[Classify3D, np.ndarray]:
    """The 3D classifier of one ``sim/hetero.py`` set (module docstring), classifying to
    ``resolution`` Å, and its truth labels (0-based: the state, or for a spread of angles the
    angle decile)."""
    spec = HeteroSimulation(**{"phantom_box": 32, "n_particles": args.particles, "snr": args.snr,
                               "domain_radius": 0.2, "angle_noise_deg": 0.5,
                               "shift_noise_px": 0.25, **states})
    data = simulate_hetero(spec, seed=seed)
    if data.angles is None:
        truth = data.states - 1
    else:
        low = -spec.angle_spread_deg / 2
        truth = np.minimum((data.angles - low) / spec.angle_spread_deg * 10, 9).astype(int)
    source = ArraySource(data.images, data.particles, pixel_size=data.voxel_size)
    # class3d options pinned (not the defaults, which may change): the comparison stays the same
    trusted = Classify3D(source, rule=QuadraticPenalty(beta=0.5),
                         options=ClusterOptions(n_classes=2, max_iter=args.max_iter, sigma0=0.01,
                                                plateau=0),
                         class3d=Class3DOptions(init="pca", init_maps=40, resolution=resolution,
                                                mask_diameter=None, whiten=False))
    return trusted, truth


def makers_3d(args) -> dict:
    four = dict(populations=(0.25,) * 4, state_angles=(0.0,) * 4,
                state_absent=(False, False, True, True), second_domain_centre=(0.25, 0.0, 0.0),
                second_domain_radius=0.12, state_second_absent=(False, True, False, True))
    one = dict(populations=(1.0,), state_angles=(0.0,), state_absent=(False,))
    makers = {"discrete": lambda s: hetero(args, s, **four),
              "homogeneous": lambda s: hetero(args, s, **one),
              "continuous": lambda s: hetero(args, s, **one, angle_spread_deg=args.spread)}
    if RIBOSOME.is_file():
        # 10.2 Å pixels at 32 px: 24 Å is the band the phantom's 12 Å is at its 4 Å pixels
        makers["real"] = lambda s: hetero(args, s, 24.0, **one, volume=str(RIBOSOME),
                                          voxel_size=5.0, box_size=32)
    else:
        print(f"real set skipped: {RIBOSOME} is absent (the shared data beside the repository)")
    return makers


def makers_2d(args) -> dict:
    n = 4 * args.per_state

    def with_truth(source):
        return classifier(source, args.max_iter), source.centre_labels

    return {"discrete": lambda s: with_truth(discrete(4, args.per_state, args.box, args.snr, s)),
            "homogeneous": lambda s: with_truth(discrete(1, n, args.box, args.snr, s)),
            "continuous": lambda s: with_truth(arc(n, args.box, args.snr, s))}


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """The smallest, over leaves, fraction of a leaf's members from its commonest state."""
    return min(np.bincount(truth[labels == k]).max() / (labels == k).sum()
               for k in np.unique(labels))


def row(**figures) -> dict:
    return {**figures, "threads": torch.get_num_threads(),
            "load": " / ".join(f"{v:.1f}" for v in os.getloadavg())}


def show(rows: list[dict]) -> None:
    print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dimension", choices=["2d", "3d"], default="2d")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-state", type=int, default=50, help="2D images per state")
    parser.add_argument("--particles", type=int, default=1200, help="3D particles per set")
    parser.add_argument("--spread", type=float, default=120.0,
                        help="3D continuous: range of the hinge angle (deg)")
    parser.add_argument("--box", type=int, default=32, help="2D box (px)")
    parser.add_argument("--snr", type=float, default=None, help="default 0.5 in 2D, 1 in 3D")
    parser.add_argument("--max-iter", type=int, default=None, help="default 8 in 2D, 10 in 3D")
    parser.add_argument("--min-size", type=int, default=None,
                        help="SplitOptions.min_size; default 20 in 2D, 100 in 3D")
    parser.add_argument("--split-replicates", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="processes for split/reproduce")
    parser.add_argument("--replicates", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--sets", nargs="+", default=None,
                        help="default: discrete homogeneous continuous reproduce (+ real in 3D)")
    args = parser.parse_args()
    three = args.dimension == "3d"
    args.snr = args.snr if args.snr is not None else (1.0 if three else 0.5)
    args.max_iter = args.max_iter or (10 if three else 8)
    min_size = args.min_size or (100 if three else 20)
    sets = args.sets or (["discrete", "homogeneous", "continuous", "reproduce"]
                         + (["real"] if three else []))
    logging.disable(logging.WARNING)  # each run logs a line; the table is the output
    warnings.simplefilter("ignore", ConvergenceWarning)  # a capped run is part of the setting
    makers = makers_3d(args) if three else makers_2d(args)
    rows = []
    for name in [s for s in sets if s in makers]:
        for seed in range(args.seeds):
            trusted, truth = makers[name](seed)
            start = time.perf_counter()
            options = SplitOptions(seed=seed, min_size=min_size, replicates=args.split_replicates)
            tree = exhaustive_split(trusted, len(trusted), options=options, workers=args.workers)
            rows.append(row(bench="split", set=name, seed=seed, n=len(trusted),
                            replicates=args.split_replicates, workers=args.workers,
                            leaves=len(tree.leaves), accepted=tree.accepted,
                            continuous=len(tree.continuous), sizes="/".join(
                                str(int(c)) for c in np.bincount(tree.labels)),
                            min_purity=round(purity(tree.labels, truth), 3),
                            seconds=round(time.perf_counter() - start, 1)))
            show(rows)
    if "reproduce" in sets or "parallel" in sets:
        trusted, _ = makers["discrete"](0)
        plan = ([(k, r, args.workers) for k in (4, 8) for r in args.replicates]
                if "reproduce" in sets else [])
        plan += ([(4, r, w) for r in args.replicates for w in (1, 2)]
                 if "parallel" in sets else [])
        labels = {}
        for k, replicates, workers in plan:
            start = time.perf_counter()
            result = reproduce(trusted, len(trusted), k, replicates=replicates, workers=workers)
            seconds = time.perf_counter() - start
            summary = result.summary
            same = labels.setdefault((k, replicates), result.labels)
            rows.append(row(bench="reproduce", set=f"discrete K={k}", seed=0, n=len(trusted),
                            replicates=replicates, workers=workers,
                            stability_median=round(summary["stability_median"], 3),
                            stability_min=round(float(result.classes["stability"].min()), 3),
                            size_cv_max=round(float(result.classes["size_cv"].max()), 3),
                            ari_mean=round(summary["ari_mean"], 3),
                            same_as_first=bool(np.array_equal(same, result.labels)),
                            seconds=round(seconds, 1)))
            show(rows)
    table = pd.DataFrame(rows)
    print("\n" + table.to_string(index=False, na_rep=""))
    split = table[table["bench"] == "split"] if len(table) else table
    goals = {"discrete": lambda r: r.leaves == 4 and r.min_purity >= 0.9,
             "homogeneous": lambda r: r.accepted == 0,
             "real": lambda r: r.accepted == 0,
             "continuous": lambda r: r.continuous > 0 or r.accepted == 0}
    for name, goal in goals.items():
        runs = split[split["set"] == name] if len(split) else split
        if len(runs):
            met = sum(goal(r) for r in runs.itertuples())
            print(f"{name}: goal met in {met} of {len(runs)} seeds"
                  + (f"; false-split rate {(runs['accepted'] > 0).mean():.2f}"
                     if name in ("homogeneous", "real") else ""))


if __name__ == "__main__":
    main()
