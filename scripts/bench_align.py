"""Benchmark of the polar-Fourier aligner: prints a table of problem size, time, pose
evaluations per second (image × reference × angle × shift), peak memory.

(a) CPU: N images of 64 px × K references, M angles, shifts ±3 px step 1, no mirror;
(b) the brute-force search on a subsample (its time scaled to the full problem, said so) and the
    agreement of the best poses with (a) on that subsample;
(c) CUDA: 100,000 × 200 (when a GPU is present; 'skipped: no CUDA' otherwise), with the fraction
    of the GPU's dense complex-GEMM throughput (measured here with torch.matmul) it reaches.

Images are random phantom projections (sim/), so nothing is read from disk.

    python scripts/bench_align.py                      # the benchmark sizes
    python scripts/bench_align.py --n-images 1000      # quicker
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import torch

from ackmeans_torch.ops.align import AlignOptions, align, align_brute_force, shift_grid
from ackmeans_torch.ops.projection import project
from ackmeans_torch.sim.views import random_rotations
from ackmeans_torch.sim.volume import phantom


def _stack(n: int, size: int, seed: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    volume = phantom(size, device=device)
    return project(volume, random_rotations(n, generator=g).float().to(device))


def _row(name: str, n: int, k: int, m: int, t: int, seconds: float, memory: str, note: str = "") -> str:
    rate = n * k * m * t / seconds
    return f"| {name} | {n} × {k} × {m} × {t} | {seconds:.2f} | {rate:.3g} | {memory} | {note} |"


def _complex_gemm_flops(device: str) -> float:
    """Measured complex64 GEMM rate (real flops/s) for a large square product on ``device``."""
    a = torch.randn(4096, 4096, dtype=torch.complex64, device=device)
    torch.matmul(a, a)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        torch.matmul(a, a)
    torch.cuda.synchronize()
    return 5 * 8 * 4096**3 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=10_000)
    parser.add_argument("--n-references", type=int, default=100)
    parser.add_argument("--n-angles", type=int, default=128)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--brute-images", type=int, default=4, help="subsample for (b)")
    parser.add_argument("--brute-references", type=int, default=4)
    parser.add_argument("--gpu-images", type=int, default=100_000)
    parser.add_argument("--gpu-references", type=int, default=200)
    parser.add_argument("--memory-bytes", type=int, default=None)
    parser.add_argument(
        "--no-refine", action="store_true",
        help="grid poses only (same distances; what the clustering loop needs); refinement adds about 10 %% on CPU",
    )
    args = parser.parse_args()
    sampling = dict(n_angles=args.n_angles, max_shift=3.0, shift_step=1.0, mirror=False)
    refine = not args.no_refine
    n_shifts = shift_grid(3.0, 1.0).shape[0]
    m, n, k = args.n_angles, args.n_images, args.n_references

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("| run | N × K × M × T | time s | poses/s | peak RSS / GPU mem | note |")
    print("|---|---|---|---|---|---|")
    images = _stack(n, args.box, 0, "cpu")
    references = _stack(k, args.box, 1, "cpu")
    start = time.perf_counter()
    align(images, references, memory_bytes=args.memory_bytes, refine=refine, **sampling)
    seconds = time.perf_counter() - start
    rss = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB RSS"
    print(_row("(a) polar, CPU", n, k, m, n_shifts, seconds, rss, f"refine={refine}"))

    bi, bk = min(args.brute_images, n), min(args.brute_references, k)
    start = time.perf_counter()
    slow = align_brute_force(images[:bi], references[:bk], AlignOptions(**sampling))
    brute = time.perf_counter() - start
    scaled = brute * (n * k) / (bi * bk)
    grid = align(images[:bi], references[:bk], refine=False, **sampling)
    steps = torch.remainder(torch.round((grid.angle - slow.angle) * m / (2 * math.pi)), m)
    same_angle = ((steps == 0) | (steps == m - 1) | (steps == 1)).float().mean().item()
    same_shift = (grid.shift == slow.shift).all(-1).float().mean().item()
    best_agree = (grid.distances.argmin(1) == slow.distances.argmin(1)).float().mean().item()
    print(_row(
        "(b) brute force, CPU", n, k, m, n_shifts, scaled, "-",
        f"measured {brute:.1f} s on {bi} × {bk}, scaled ×{n * k / (bi * bk):.0f}; "
        f"ratio {scaled / seconds:.0f}× slower; grid poses: angle within 1 step {same_angle:.0%}, "
        f"shift equal {same_shift:.0%}, best reference equal {best_agree:.0%}",
    ))

    if not torch.cuda.is_available():
        print("| (c) polar, CUDA | - | - | - | - | skipped: no CUDA |")
        return
    gn, gk = args.gpu_images, args.gpu_references
    images = _stack(gn, args.box, 2, "cuda")
    references = _stack(gk, args.box, 3, "cuda")
    align(images[:256], references, **sampling)  # warm-up (kernels, FFT plans)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    align(images, references, memory_bytes=args.memory_bytes, refine=refine, **sampling)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    radii = args.box // 2
    flops = 8 * gn * gk * n_shifts * radii * (m // 2 + 1)
    peak = _complex_gemm_flops("cuda")
    mem = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    print(_row(
        f"(c) polar, {torch.cuda.get_device_name()}", gn, gk, m, n_shifts, seconds, mem,
        f"GEMM {flops / seconds / 1e12:.1f} Tflop/s = {flops / seconds / peak:.0%} of measured complex64 "
        f"matmul {peak / 1e12:.1f} Tflop/s",
    ))


if __name__ == "__main__":
    main()
