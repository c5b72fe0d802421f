"""Time and memory of one round of 3D classification (E-step distances to every class's
projections + M-step reconstructions), and how they grow with N and K.

Particles: the built-in heterogeneous phantom set (``sim.hetero.HeteroSimulation``, 64 px,
4 Å/px, CTF, SNR 1/10) held in memory, simulated once at the largest N and sliced. Per (N, K):
one round at the target resolution ``--resolution`` (the E-step band and the back-projected
band), timed alone after the start maps are made: ``ClusterOptions(max_iter=1)`` runs the
initial assignment and one round, so the printed time is (total − start maps) / 2 passes. Peak
RSS is read from ``resource.getrusage`` in a fresh process per row, so rows do not inherit each
other's peaks. Every row carries the torch threads, ``OMP_NUM_THREADS`` and the 1-minute load
average before it.

    python scripts/bench_class3d_scale.py                         # N 10k, 30k, 100k at K 4; K 2, 8 at 30k
    python scripts/bench_class3d_scale.py --rows 2000x4 --resolution 12
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


def one_row(n: int, k: int, resolution: float, device: str) -> dict:
    import torch

    from ackmeans_torch.class3d.model import SliceMatch
    from ackmeans_torch.class3d.run import Class3DOptions, initial_maps
    from ackmeans_torch.cluster.engine import fit_clusters, identity
    from ackmeans_torch.cluster.penalties import QuadraticPenalty
    from ackmeans_torch.data.prepared import PreprocessOptions, preprocess
    from ackmeans_torch.data.source import ArraySource
    from ackmeans_torch.sim.hetero import HeteroSimulation, simulate_hetero

    data = simulate_hetero(HeteroSimulation(n_particles=n, snr=0.1), seed=0)
    source = preprocess(ArraySource(data.images, data.particles, pixel_size=data.voxel_size),
                        PreprocessOptions(phase_flip=False), device=device)
    provider = SliceMatch(source, resolution=resolution, mask_radius=source.mask_radius)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    maps = initial_maps(provider, Class3DOptions(init="simple", resolution=resolution), k,
                        generator=generator, shard=identity, reduce=identity)
    made = time.perf_counter()
    fit_clusters(provider, maps, rule=QuadraticPenalty(beta=0.5), max_iter=1, sigma0=0.0,
                 batch_size=1, chunk_size=1024, generator=generator)
    end = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "k": k, "start_s": made - start, "round_s": (end - made) / 2,
            "peak_mb": peak_mb, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*",
                        default=["10000x4", "30000x4", "100000x4", "30000x2", "30000x8"],
                        help="NxK per row")
    parser.add_argument("--resolution", type=float, default=12.0, help="target resolution (Å)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, k = map(int, args.child.split("x"))
        print(json.dumps(one_row(n, k, args.resolution, args.device)))
        return
    print(f"# 3D classification, one round: 64 px, target {args.resolution} Å, device "
          f"{args.device}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"{'N':>8} {'K':>3} {'round (s)':>10} {'per 1k particles (s)':>21} "
          f"{'start maps (s)':>15} {'peak RSS (MB)':>14} {'threads':>8} {'load':>6}")
    for row in args.rows:
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, __file__, "--child", row, "--resolution",
                              str(args.resolution), "--device", args.device],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['n']:>8} {r['k']:>3} {r['round_s']:>10.1f} {1000 * r['round_s'] / r['n']:>21.3f} "
              f"{r['start_s']:>15.1f} {r['peak_mb']:>14.0f} {r['threads']:>8} {load:>6.1f}",
              flush=True)


if __name__ == "__main__":
    main()
