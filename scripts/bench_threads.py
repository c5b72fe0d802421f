"""Thread settings on a shared machine: the same alignment (N images × K references, 64 px, 128
angles, 49 shifts) in a fresh process per setting, so each starts its OpenMP pool under that
setting. Prints one markdown row per setting with the load average it ran under.

    python scripts/bench_threads.py                  # 200 × 100
    python scripts/bench_threads.py --n 400 --k 50

Settings: torch threads 1 and 2, with OpenMP's default wait policy (threads spin while they wait
for work) and with ``OMP_WAIT_POLICY=PASSIVE`` (they sleep), and the package's own default
(``ackmeans_torch/runtime.py``: what ``import ackmeans_torch`` sets up when nothing is set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
n, k, own_default = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
if own_default:
    import ackmeans_torch  # sets the package's thread defaults before torch starts
policy = os.environ.get("OMP_WAIT_POLICY", "(default)")  # what OpenMP starts with
import torch
from ackmeans_torch.ops.align import align
g = torch.Generator().manual_seed(0)
images, refs = torch.randn(n, 64, 64, generator=g), torch.randn(k, 64, 64, generator=g)
align(images[:8], refs[:4])  # warm-up
start = time.perf_counter()
align(images, refs)
print(json.dumps({"seconds": time.perf_counter() - start, "threads": torch.get_num_threads(),
                  "wait_policy": policy}))
"""


def run(n: int, k: int, env_changes: dict[str, str | None], own_default: bool) -> dict:
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    load = os.getloadavg()
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(k), str(int(own_default))],
                         env=env, capture_output=True, text=True, check=True)
    return {**json.loads(out.stdout), "load": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    plain = {"OMP_WAIT_POLICY": None}
    settings = [
        ("2 threads, default wait policy", {**plain, "OMP_NUM_THREADS": "2"}, False),
        ("2 threads, OMP_WAIT_POLICY=PASSIVE", {"OMP_NUM_THREADS": "2",
                                                "OMP_WAIT_POLICY": "PASSIVE"}, False),
        ("1 thread, default wait policy", {**plain, "OMP_NUM_THREADS": "1"}, False),
        ("package default (nothing set)", {**plain, "OMP_NUM_THREADS": None}, True),
    ]
    print(f"alignment of {args.n} × {args.k} images, 64 px, 128 angles, 49 shifts; "
          f"{os.cpu_count()} CPUs")
    print("| setting | torch threads | OMP_WAIT_POLICY | seconds | load avg (1/5/15 min) |")
    print("|---|---|---|---|---|")
    for name, env, own in settings:
        row = run(args.n, args.k, env, own)
        load = " / ".join(f"{v:.2f}" for v in row["load"])
        print(f"| {name} | {row['threads']} | {row['wait_policy']} | {row['seconds']:.2f} | "
              f"{load} |")


if __name__ == "__main__":
    main()
