"""Time and memory of rounds of 3D classification (E-step distances to every class's
projections + M-step reconstructions), side by side with RELION Class3D per iteration, and how
they grow with N and K.

Side by side (``--relion N ...``, default 3,000 and 30,000): the 70S benchmark set of
``scripts/bench_class3d.py`` (3 states 50/30/20 %, 64 px of 5.08 Å, CTF, SNR 1/10, pose noise
2°/1 px, as ``experiment=hetero3d_70s`` makes it, written to ``particles.star``) is classified
by RELION (``relion_refine --skip_align --K 3 --tau2_fudge 4 --iter 25 --j 2``, niced, the exact
lines of ``bench_class3d.relion_commands``; ``--relion-iter`` sets ``--iter``; seconds per
iteration = the mean time between consecutive ``run_itNNN_data.star`` files; its band grows
over the iterations, and the like-for-like band is their mean) and then by ours on the same
STAR, K = 3, with one torch thread and with two, at our target resolution and at the band
RELION's iterations used
(its ``rlnCurrentImageSize``: the work per particle grows with the band's area, so this is the
like-for-like row). Ours: a fresh process
per row reads the STAR, makes the start maps (random halves, RELION's reference is made
outside its iterations too), then ``fit_clusters`` runs the initial assignment and as many
ACK-means rounds after it as make RELION's number of iterations (as classify3d runs them: scale
on, own-class correction off), each an E-step over all particles and a complete M-step (the K
class maps, their half maps and FSC); the scale rows run ``--rounds`` after the initial pass.
Printed: round 1 (every particle inserted afresh) and the mean of rounds 2 on (inserted
incrementally once the previous round moved ≤ 50 % of the particles), with σ, the % of
particles that changed class in each, and the mean of every pass, the initial assignment
included (a job's iterations, as RELION's mean counts its first). The ratios are RELION's
seconds per iteration over ours per round, for round 1, the later rounds and every pass.

Scale rows (``--rows NxK ...``): ours only, on the built-in heterogeneous phantom set
(``sim.hetero.HeteroSimulation``, 64 px, 4 Å/px, CTF, SNR 1/10) held in memory, simulated in a
fresh process per row; peak RSS from ``resource.getrusage`` of that process.

Every row carries its torch threads and the 1-minute load average when it ended, without
which timings on a shared machine mean nothing.

    python scripts/bench_class3d_scale.py                         # side by side at 3k, 30k; scale rows
    python scripts/bench_class3d_scale.py --relion 3000 --rows 2000x4
    python scripts/bench_class3d_scale.py --relion --rows 100000x4 30000x2 30000x8
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from ackmeans_torch.class3d.model import CACHE_BYTES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def time_round(source, n_classes: int, resolution: float, rounds: int,
               cache_gb: float) -> dict:
    """Start maps, then the initial assignment and ``rounds`` rounds of ACK-means (β 0.5, as
    classify3d runs them: the per-particle scale on, the own-class correction off) on
    ``source`` (particles with poses and CTF): seconds of the start maps and of each pass, the
    fraction of particles that changed class in each."""
    import torch

    from ackmeans_torch.class3d.model import SliceMatch
    from ackmeans_torch.class3d.run import Class3DOptions, initial_maps
    from ackmeans_torch.cluster.engine import fit_clusters, identity
    from ackmeans_torch.cluster.penalties import QuadraticPenalty
    from ackmeans_torch.data.prepared import PreprocessOptions, preprocess

    source = preprocess(source, PreprocessOptions(phase_flip=False))
    provider = SliceMatch(source, resolution=resolution, mask_radius=source.mask_radius,
                          scale=Class3DOptions().scale, cache_bytes=int(cache_gb * 2**30))
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    maps = initial_maps(provider, Class3DOptions(init="simple", resolution=resolution),
                        n_classes, generator=generator, shard=identity, reduce=identity)
    ends = [time.perf_counter()]
    fit = fit_clusters(provider, maps, rule=QuadraticPenalty(beta=0.5), max_iter=rounds,
                       sigma0=0.0, batch_size=1, chunk_size=1024, generator=generator,
                       leave_one_out=False, on_iteration=lambda state: ends.append(
                           time.perf_counter()))
    return {"n": provider.n_items, "k": n_classes, "start_s": ends[0] - start,
            "pass_s": np.diff(ends).tolist(), "sigma": [h["sigma"] for h in fit.history],
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def rounds_cell(r: dict) -> tuple[float, float, str]:
    """Round 1 (every particle inserted: σ of the initial pass is 1), the mean of the later
    rounds, and those rounds' σ (the fraction of particles that changed class in each)."""
    later = r["pass_s"][2:] or r["pass_s"][1:]
    sigmas = ", ".join(f"{100 * s:.1f}" for s in r["sigma"][2:])
    return r["pass_s"][1], float(np.mean(later)), sigmas


def child(args) -> dict:
    """One row in this (fresh) process: ``--child NxK`` on the phantom set, or
    ``--child-star STAR`` with ``--k`` classes."""
    if args.child_star:
        from ackmeans_torch.data.stack import open_source

        return time_round(open_source(args.child_star), args.k, args.resolution, args.rounds,
                          args.cache_gb)
    import warnings

    from ackmeans_torch.data.source import ArraySource
    from ackmeans_torch.sim.hetero import HeteroSimulation, simulate_hetero

    n, k = map(int, args.child.split("x"))
    data = simulate_hetero(HeteroSimulation(n_particles=n, snr=0.1), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one round never converges: that is the point
        return time_round(ArraySource(data.images, data.particles, pixel_size=data.voxel_size),
                          k, args.resolution, args.rounds, args.cache_gb)


def run_child(extra: list[str], *, threads: int, resolution: float, rounds: int,
              cache_gb: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, __file__, *extra, "--resolution", str(resolution),
                          "--rounds", str(rounds), "--cache-gb", str(cache_gb)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def relion_per_iteration(set_dir: Path, *, box: float, n_classes: int, lowpass: float,
                         threads: int, n_iter: int) -> tuple[list, list]:
    """Run RELION's reference and Class3D lines (``bench_class3d.relion_commands``, ``n_iter``
    iterations; particle diameter 90% of the ``box`` in Å) in ``set_dir``; the seconds of each
    iteration, and the band each compared and inserted: ``rlnCurrentImageSize`` / 2 of its
    model.star (RELION's ``current_size``: from ``--ini_high`` plus ``--incr_size`` shells, far
    short of Nyquist in early iterations, growing with the resolution)."""
    from bench_class3d import relion_commands

    from ackmeans_torch.io.star import read_star

    run_dir = set_dir / "r3d_speed"
    run_dir.mkdir(parents=True, exist_ok=True)
    commands = relion_commands(n_classes=n_classes, n_iter=n_iter, diameter=0.9 * box,
                               lowpass=lowpass, threads=threads)
    commands[-1][commands[-1].index("--o") + 1] = "r3d_speed/run"
    with open(run_dir / "relion.log", "w") as log:
        for command in commands:
            print("  $ (cd", set_dir, "&& nice -n 10", shlex.join(command) + ")", flush=True)
            subprocess.run(["nice", "-n", "10", *command], cwd=set_dir, stdout=log,
                           stderr=subprocess.STDOUT, check=True)
    times = [(run_dir / f"run_it{i:03d}_data.star").stat().st_mtime for i in range(n_iter + 1)]
    sizes = [float(read_star(run_dir / f"run_it{i:03d}_model.star")["model_general"]
                   ["rlnCurrentImageSize"]) for i in range(1, n_iter + 1)]
    return np.diff(times).tolist(), [size / 2 for size in sizes]


def side_by_side(n: int, args) -> list[str]:
    from bench_class3d import MAP, simulate_set

    if not MAP.is_file():
        raise SystemExit(f"{MAP} is absent: the 70S map lives in ../shared/data beside the repo "
                         "(or skip the side-by-side rows: --relion)")
    set_dir = args.out / f"n{n}"
    start = time.perf_counter()
    data = simulate_set(set_dir, n=n, snr=0.1, populations=[0.5, 0.3, 0.2], seed=0,
                        angle_noise=2.0, shift_noise=1.0)
    print(f"# simulated {n} particles of the 70S set in {time.perf_counter() - start:.0f} s "
          f"-> {set_dir}", flush=True)
    size = data.images.shape[-1]
    per_iter, bands = relion_per_iteration(set_dir, box=size * data.voxel_size, n_classes=3,
                                           lowpass=args.lowpass, threads=args.j,
                                           n_iter=args.relion_iter)
    print(f"# RELION's band per iteration (px): {', '.join(f'{b:g}' for b in bands)}")
    relion, band = float(np.mean(per_iter)), float(np.mean(bands))
    same = size * data.voxel_size / band  # RELION's band as a target resolution (Å)
    lines = [f"| {n:,} | 3 | RELION 3.1 `--j {args.j}`, its band {same:.1f} Å ({band:g} px) | "
             f"{relion:.1f} per iteration ({', '.join(f'{t:.1f}' for t in per_iter)}) | - | "
             f"{os.getloadavg()[0]:.1f} |"]
    print(lines[-1], flush=True)
    # as many passes as RELION's iterations, unless no particle changes class before
    rounds = args.relion_iter - 1
    for threads in args.side_threads:
        for resolution in (args.resolution, same):
            r = run_child(["--child-star", str(set_dir / "particles.star"), "--k", "3"],
                          threads=threads, resolution=resolution, rounds=rounds,
                          cache_gb=args.cache_gb)
            first, later, sigmas = rounds_cell(r)
            every = float(np.mean(r["pass_s"]))
            lines.append(f"| {n:,} | 3 | ours, band {resolution:.1f} Å, {threads} torch "
                         f"thread{'s' * (threads > 1)} | {first:.2f} (round 1); {later:.2f} "
                         f"(rounds 2–{len(r['pass_s']) - 1}, σ {sigmas} %); {every:.2f} (all "
                         f"{len(r['pass_s'])} passes) | {relion / first:.1f}; "
                         f"{relion / later:.1f}; {relion / every:.1f} | "
                         f"{os.getloadavg()[0]:.1f} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relion", nargs="*", type=int, default=[3000, 30000],
                        help="N of the side-by-side rows with RELION (none: skip them)")
    parser.add_argument("--rows", nargs="*",
                        default=["10000x4", "30000x4", "100000x4", "30000x2", "30000x8"],
                        help="NxK per scale row (ours only)")
    parser.add_argument("--resolution", type=float, default=12.0,
                        help="our target resolution (Å); the side-by-side rows add RELION's band")
    parser.add_argument("--lowpass", type=float, default=40.0,
                        help="RELION's initial reference low-pass and --ini_high (Å)")
    parser.add_argument("--j", type=int, default=2, help="RELION threads (--j)")
    parser.add_argument("--relion-iter", type=int, default=25,
                        help="RELION's iterations (--iter) in the side-by-side rows")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the scale rows")
    parser.add_argument("--side-threads", type=int, nargs="+", default=[1, 2],
                        help="torch threads of our side-by-side rows")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds after the initial pass (round 1 inserts every particle; "
                             "later ones, once few change class, only those that do)")
    parser.add_argument("--cache-gb", type=float, default=CACHE_BYTES / 2**30,
                        help="GiB our rows keep between rounds (class3d.cache_gb)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_class3d_scale")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-star", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.child_star:
        print(json.dumps(child(args)))
        return
    print(f"# 3D classification, {args.relion_iter} passes side by side, {args.rounds} rounds "
          f"after the initial pass in the scale rows: 64 px, target "
          f"{args.resolution:g} Å band unless said")
    if args.relion:
        print("\n| N | K | program | seconds per iteration / round | RELION / ours | load |"
              "\n|---|---|---|---|---|---|")
        for n in args.relion:
            side_by_side(n, args)
    if args.rows:
        print("\n| N | K | s round 1 | s later rounds (σ %) | s per 1k particles (round 1; "
              "later) | start maps (s) | peak RSS (MB) | kept (GiB) | torch threads | load |"
              "\n|---|---|---|---|---|---|---|---|---|---|")
        for row in args.rows:
            r = run_child(["--child", row], threads=args.threads, resolution=args.resolution,
                          rounds=args.rounds, cache_gb=args.cache_gb)
            first, later, sigmas = rounds_cell(r)
            print(f"| {r['n']:,} | {r['k']} | {first:.2f} | {later:.2f} ({sigmas}) | "
                  f"{1000 * first / r['n']:.3f}; {1000 * later / r['n']:.3f} | "
                  f"{r['start_s']:.1f} | {r['peak_mb']:,.0f} | {args.cache_gb:g} | "
                  f"{r['threads']} | "
                  f"{os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
