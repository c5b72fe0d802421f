"""Consensus on one dense micrograph: time and memory against box density.

Synthetic: N true particles of 180 px uniformly over one 4096² micrograph; three pickers with
recall 95 / 80 / 60 %, 8 px centre jitter and 15 / 30 / 50 % false picks (N = 10,000 gives ~30,000
boxes in one conflict component). Each density runs in its own process so the peak RSS
(``resource.getrusage`` maxrss) is that run's. Prints one table row per density with the thread
setting and the load average, since the machine is shared.

    OMP_NUM_THREADS=1 python scripts/bench_consensus_dense.py --particles 1000,2000,4000,10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from ackmeans_torch.io.coords import PickSet
from ackmeans_torch.picking.consensus import PickerData, run_consensus

BOX, SIDE = 180.0, 4096.0
PICKERS = (("a", 0.95, 0.15), ("b", 0.80, 0.30), ("c", 0.60, 0.50))


def dense(n_true: int, seed: int = 0) -> PickerData:
    rng = np.random.default_rng(seed)
    true = rng.uniform(BOX / 2, SIDE - BOX / 2, (n_true, 2))
    picks = {}
    for name, recall, false_frac in PICKERS:
        found = true[rng.random(n_true) < recall]
        found = found + rng.normal(0, 8, found.shape)
        false = rng.uniform(BOX / 2, SIDE - BOX / 2, (int(false_frac * len(found)), 2))
        xy = np.concatenate([found, false])
        picks[name] = PickSet(xy, np.full(len(xy), BOX), rng.uniform(0.3, 1, len(xy)))
    return PickerData([p[0] for p in PICKERS], {"mic": picks})


def one(n_true: int, time_limit: float) -> dict:
    data = dense(n_true)
    t0 = time.perf_counter()
    (r,) = run_consensus(data, time_limit=time_limit)
    dt = time.perf_counter() - t0
    bound = r.objective / (1 - r.gap) if r.gap < 1 else float("inf")
    return dict(particles=n_true, boxes=sum(r.n_boxes.values()), cliques=r.n_cliques, seconds=dt,
                rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, objective=r.objective,
                bound=bound, gap=r.gap, status=r.status, torch_threads=torch.get_num_threads(),
                omp=os.environ.get("OMP_NUM_THREADS", "unset"), load=os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", default="1000,2000,4000,10000")
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one is not None:
        print(json.dumps(one(args.one, args.time_limit)))
        return
    print("| particles | boxes | cliques | seconds | peak RSS (MB) | objective | LP bound | gap | status |"
          " torch threads | OMP_NUM_THREADS | load avg (1/5/15 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in map(int, args.particles.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--time-limit", str(args.time_limit),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['particles']} | {r['boxes']} | {r['cliques']} | {r['seconds']:.2f} | {r['rss_mb']:.0f} | "
              f"{r['objective']:.3f} | {r['bound']:.3f} | {100 * r['gap']:.2f} % | {r['status']} | "
              f"{r['torch_threads']} | {r['omp']} | {' / '.join(f'{v:.2f}' for v in r['load'])} |", flush=True)


if __name__ == "__main__":
    main()
