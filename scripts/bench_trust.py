"""Benchmark of the trust tools (``ackmeans_torch/trust``) on simulated 2D sets with truth.

Sets (the built-in phantom, ``--box`` px, SNR ``--snr``, no CTF):

* discrete: 4 well-separated orientation centres (the simulator's half-sphere centres) as the
  4 states, ``--per-state`` images each, 5° spread (goal: 4 leaves, each ≥ 90 % one state);
* homogeneous: one centre, ``4 x --per-state`` images, 5° spread (goal: no accepted split);
* continuous: the same number of views spread uniformly along one great-circle arc (tilt 0–90°
  at rot 0, psi uniform): a continuum, the 2D analogue of a hinge angle (goal: flagged
  continuous, or not split, never cut into ever smaller classes).

Rows: ``split`` on each set for ``--seeds`` seeds (leaves, purity of the leaves against the
states, accepted splits, continuous flags, time), and ``reproduce`` on the discrete set with K = 4
and the over-split K = 8, for R in ``--replicates`` (median stability, pairwise ARI, time). Each
row carries the torch thread count and the load average.

    OMP_NUM_THREADS=1 python scripts/bench_trust.py                  # the README table
    OMP_NUM_THREADS=1 python scripts/bench_trust.py --seeds 2 --per-state 40   # a quick look
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.classify.mra import MRA
from ackmeans_torch.cluster.options import ClusterOptions
from ackmeans_torch.cluster.penalties import QuadraticPenalty
from ackmeans_torch.data.simulated import Simulation, SimulatedSource
from ackmeans_torch.ops.fourier import fourier_crop_volume, ifft2c
from ackmeans_torch.ops.projection import FourierProjector
from ackmeans_torch.ops.rotations import euler_to_matrix
from ackmeans_torch.sim.noise import add_gaussian_noise, noise_sigma
from ackmeans_torch.sim.volume import phantom
from ackmeans_torch.trust.classifier import Classify2D
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


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """The smallest, over leaves, fraction of a leaf's members from its commonest state."""
    return min(np.bincount(truth[labels == k]).max() / (labels == k).sum()
               for k in np.unique(labels))


def row(**figures) -> dict:
    return {**figures, "threads": torch.get_num_threads(),
            "load": " / ".join(f"{v:.1f}" for v in os.getloadavg())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-state", type=int, default=50)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--snr", type=float, default=0.5)
    parser.add_argument("--max-iter", type=int, default=8)
    parser.add_argument("--replicates", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--sets", nargs="+", default=["discrete", "homogeneous", "continuous",
                                                      "reproduce"])
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # each run logs a line; the table is the output
    rows = []
    n = 4 * args.per_state
    makers = {"discrete": lambda s: discrete(4, args.per_state, args.box, args.snr, s),
              "homogeneous": lambda s: discrete(1, n, args.box, args.snr, s),
              "continuous": lambda s: arc(n, args.box, args.snr, s)}
    for name in [s for s in args.sets if s in makers]:
        for seed in range(args.seeds):
            source = makers[name](seed)
            trusted = classifier(source, args.max_iter)
            start = time.perf_counter()
            tree = exhaustive_split(trusted, len(source),
                                    options=SplitOptions(seed=seed))
            truth = source.centre_labels
            rows.append(row(bench="split", set=name, seed=seed, n=n, leaves=len(tree.leaves),
                            accepted=tree.accepted, continuous=len(tree.continuous),
                            min_purity=round(purity(tree.labels, truth), 3),
                            seconds=round(time.perf_counter() - start, 1)))
            print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1),
                  flush=True)
    if "reproduce" in args.sets:
        source = discrete(4, args.per_state, args.box, args.snr, 0)
        trusted = classifier(source, args.max_iter)
        for k in (4, 8):
            for replicates in args.replicates:
                start = time.perf_counter()
                result = reproduce(trusted, len(source), k, replicates=replicates)
                summary = result.summary
                rows.append(row(bench="reproduce", set=f"discrete K={k}", seed=0, n=n,
                                replicates=replicates,
                                stability_median=round(summary["stability_median"], 3),
                                stability_min=round(float(result.classes["stability"].min()), 3),
                                size_cv_max=round(float(result.classes["size_cv"].max()), 3),
                                ari_mean=round(summary["ari_mean"], 3),
                                seconds=round(time.perf_counter() - start, 1)))
                print(pd.DataFrame(rows[-1:]).to_string(index=False, header=False), flush=True)
    table = pd.DataFrame(rows)
    print("\n" + table.to_string(index=False, na_rep=""))
    split = table[table["bench"] == "split"] if len(table) else table
    goals = {"discrete": lambda r: r.leaves == 4 and r.min_purity >= 0.9,
             "homogeneous": lambda r: r.accepted == 0,
             "continuous": lambda r: r.continuous > 0 or r.accepted == 0}
    for name, goal in goals.items():
        runs = split[split["set"] == name] if len(split) else split
        if len(runs):
            met = sum(goal(r) for r in runs.itertuples())
            print(f"{name}: goal met in {met} of {len(runs)} seeds"
                  + (f"; false-split rate {(runs['accepted'] > 0).mean():.2f}"
                     if name == "homogeneous" else ""))


if __name__ == "__main__":
    main()
