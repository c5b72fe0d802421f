"""Larger-than-memory classification benchmark: peak resident memory vs stack size and
time per iteration for MRA (or MSA/MRA: ``--pipeline msa_mra``, one round) over a
memory-mapped stack read and preprocessed chunk by chunk.

Writes an N-image L px float32 stack (default 200,000 × 64 px, 3.3 GB) of noisy, randomly
shifted phantom projections (20 views), then classifies it in a fresh child process with cheap
sampling (few angles, no shift search) for ``--iterations`` iterations after the initial
assignment, and prints a table. The child samples its own /proc/self/status (RssAnon: its
private memory; RssFile: mapped stack pages, reclaimable page cache) and reports VmHWM (peak
resident set, both kinds). ``--in-memory`` materialises the preprocessed stack first instead,
for comparing the speed of the two paths at a size that fits.

    python scripts/bench_large_stack.py --dir /tmp/bench --n 200000
    python scripts/bench_large_stack.py --dir /tmp/bench --n 20000 --compare
    python scripts/bench_large_stack.py --dir /tmp/bench --n 20000 --pipeline msa_mra --compare

MRA keeps each chunk's spectra and images across iterations within
``ops.align.SPECTRA_CACHE_BYTES`` (2 GiB), which the peak memory of a large stack includes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import torch

from ackmeans_torch.io.atomic import atomic_output


def write_stack(path: Path, n: int, box: int, *, chunk: int = 10_000, seed: int = 0) -> None:
    """N noisy phantom projections written chunk by chunk into a memory-mapped MRC file."""
    from ackmeans_torch.ops.fourier import shift_images
    from ackmeans_torch.ops.projection import project
    from ackmeans_torch.ops.rotations import euler_to_matrix
    from ackmeans_torch.sim.volume import phantom

    g = torch.Generator().manual_seed(seed)
    euler = torch.cat([torch.rand(20, 2, generator=g) * torch.tensor([360.0, 180.0]),
                       torch.zeros(20, 1)], 1).double()
    views = project(phantom(box), euler_to_matrix(euler).float())
    with atomic_output(path) as tmp:
        with mrcfile.new_mmap(tmp, shape=(n, box, box), mrc_mode=2) as mrc:
            mrc.voxel_size = 2.0
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                clean = views[torch.arange(start, stop) % 20]
                clean = shift_images(clean, 2 * torch.rand(stop - start, 2, generator=g) - 1)
                mrc.data[start:stop] = (clean + clean.std() * torch.randn(
                    clean.shape, generator=g)).numpy()
            mrc.flush()


def _status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def classify_child(args: argparse.Namespace) -> None:
    """Run in the child: classify the stack and print a JSON line of figures."""
    from ackmeans_torch.classify.distributed import RunHooks
    from ackmeans_torch.classify.mra import MRA
    from ackmeans_torch.classify.msa import MSAMRA
    from ackmeans_torch.cluster.engine import ConvergenceWarning
    from ackmeans_torch.cluster.options import ClusterOptions
    from ackmeans_torch.cluster.penalties import QuadraticPenalty
    from ackmeans_torch.data.prepared import PreprocessOptions, preprocess
    from ackmeans_torch.data.stack import StackSource
    from ackmeans_torch.ops.align import AlignOptions

    peak = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            now = _status()
            for key in peak:
                peak[key] = max(peak[key], now[key])
            done.wait(0.2)

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    source = StackSource.from_stack(args.stack, pixel_size=2.0)
    images = preprocess(source, PreprocessOptions(in_memory=args.in_memory),
                        chunk_size=args.chunk)
    ready = time.perf_counter()
    stamps = []
    hooks = RunHooks(on_iteration=lambda state, poses: stamps.append(time.perf_counter()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline = MRA() if args.pipeline == "mra" else MSAMRA(n_rounds=1)
        result = pipeline.classify(
            images, rule=QuadraticPenalty(beta=0.5), mask_radius=images.mask_radius,
            align=AlignOptions(n_angles=args.angles, max_shift=0.0, refine=False),
            options=ClusterOptions(n_classes=args.classes, max_iter=args.iterations, sigma0=0.0,
                                   batch_size=args.batch, chunk_size=args.chunk, seed=0),
            hooks=hooks)
    done.set()
    passes = np.diff([ready, *stamps])
    print(json.dumps({
        "total_s": time.perf_counter() - ready, "threads": torch.get_num_threads(),
        "load": os.getloadavg(),
        "n": len(source), "box": source.box_size, "in_memory": args.in_memory,
        "load_s": ready - start, "pass_s": passes.tolist(),
        "sizes_sum": int(result.sizes.sum()), **{f"peak_{k}": v for k, v in peak.items()},
        "VmHWM": _status()["VmHWM"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ackmeans_bench"))
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--angles", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1024, help="images between size refreshes")
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--pipeline", choices=("mra", "msa_mra"), default="mra")
    parser.add_argument("--compare", action="store_true", help="also run the in-memory path")
    parser.add_argument("--keep", action="store_true", help="keep the stack afterwards")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stack", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        classify_child(args)
        return
    stack = args.dir / f"bench_{args.n}x{args.box}.mrcs"
    need = args.n * args.box**2 * 4 + 1024
    free = shutil.disk_usage(args.dir.parent if not args.dir.exists() else args.dir).free
    if not stack.exists():
        if need > 0.8 * free:
            sys.exit(f"{need / 1e9:.1f} GB stack would not fit in {free / 1e9:.1f} GB free; "
                     "lower --n")
        t = time.perf_counter()
        write_stack(stack, args.n, args.box)
        print(f"wrote {stack} ({need / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
    rows = []
    for in_memory in ([False, True] if args.compare else [False]):
        cmd = [sys.executable, __file__, "--child", f"--stack={stack}",
               f"--classes={args.classes}", f"--angles={args.angles}", f"--batch={args.batch}",
               f"--chunk={args.chunk}", f"--iterations={args.iterations}",
               f"--pipeline={args.pipeline}"]
        out = subprocess.run(cmd + (["--in-memory"] if in_memory else []), check=True,
                             capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gb = need / 1e9
    print(f"\n{args.pipeline}, K={args.classes}, {args.angles} angles, no shifts, batch {args.batch}, "
          f"chunk {args.chunk}, torch {torch.__version__}")
    print("| path | N | stack GB | peak RSS GB (VmHWM) | peak RssAnon GB | peak RssFile GB "
          "| load s | s per pass (iteration 0, 1, ...) | total s | threads | load 1/5/15 min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'in memory' if r['in_memory'] else 'chunked'} | {r['n']} | {gb:.2f} "
              f"| {r['VmHWM'] / 1e9:.2f} | {r['peak_RssAnon'] / 1e9:.2f} "
              f"| {r['peak_RssFile'] / 1e9:.2f} | {r['load_s']:.1f} "
              f"| {', '.join(f'{s:.1f}' for s in r['pass_s']) or '-'} | {r['total_s']:.1f} "
              f"| {r['threads']} | {'/'.join(f'{v:.1f}' for v in r['load'])} |")
    if not args.keep:
        stack.unlink()


if __name__ == "__main__":
    main()
