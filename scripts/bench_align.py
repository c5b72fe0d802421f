"""Benchmark of the polar-Fourier aligner: prints a table of problem size, time, pose
evaluations per second (image × reference × angle × shift), the GEMM's share of this CPU's
measured float32 matmul rate, peak memory, torch threads and the load average of each row.

(a) CPU: N images of 64 px × K references, M angles, shifts ±3 px step 1, no mirror, every
    pair's pose refined (``mode="all"``);
(a′) the same search with ``mode="best"``: all N × K distances, the pose of the best pair only;
(a″) one MRA iteration on kept spectra (``classify/mra.py``): the N × K distances without poses,
    then the pose of one assigned class per image (``align_pairs``); the spectra, made once per
    run, are timed on their own row;
(b) the brute-force search on a subsample (its time scaled to the full problem, said so) and the
    agreement of the best poses with (a) on that subsample;
(c) CUDA: 100,000 × 200 (when a GPU is present; 'skipped: no CUDA' otherwise), with the fraction
    of the GPU's dense complex-GEMM throughput (measured here with torch.matmul) it reaches;
(d) with ``--sweep``: how the time of (a″) grows with N and K.

The matmul rate is that of a 2048² float32 ``torch.mm`` with the same threads, measured right
before the rows it is compared with. Images are random phantom projections (sim/), so nothing
is read from disk.

    OMP_NUM_THREADS=1 python scripts/bench_align.py                  # the benchmark sizes
    python scripts/bench_align.py --n-images 1000 --brute-images 1   # quicker
    python scripts/bench_align.py --n-images 2000 --sweep            # and the N, K table
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time

import torch

from ackmeans_torch.ops.align import (
    SPECTRA_CACHE_BYTES,
    AlignOptions,
    align,
    align_brute_force,
    shift_grid,
)
from ackmeans_torch.ops.projection import project
from ackmeans_torch.sim.views import random_rotations
from ackmeans_torch.sim.volume import phantom


def _stack(n: int, size: int, seed: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    volume = phantom(size, device=device)
    return project(volume, random_rotations(n, generator=g).float().to(device))


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _row(name: str, n: int, k: int, m: int, t: int, seconds: float, memory: str, note: str = "",
         gemm: str = "-") -> str:
    rate = n * k * m * t / seconds
    return (f"| {name} | {n} × {k} × {m} × {t} | {seconds:.2f} | {rate:.3g} | {gemm} | {memory} | "
            f"{torch.get_num_threads()} | {_load()} | {note} |")


def _matmul_flops() -> float:
    """Measured float32 matmul rate (flops/s) of a 2048² product on the CPU, best of 5."""
    a = torch.randn(2048, 2048)
    torch.mm(a, a)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, a)
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best


def _gemm_share(n: int, k: int, m: int, t: int, radii: int, seconds: float) -> str:
    """The aligner's GEMM flops (a real bmm per angular frequency: (N·T × 2R) · (2R × 2K)) per
    second, as a fraction of the measured matmul rate."""
    peak = _matmul_flops()
    flops = 2 * (m // 2 + 1) * n * t * (2 * radii) * (2 * k)
    return f"{flops / seconds / 1e9:.1f} Gflop/s = {flops / seconds / peak:.0%} of {peak / 1e9:.1f}"


def _rss() -> str:
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB RSS"


def _kept_iteration(images, references, options, mask_radius) -> tuple[float, float]:
    """Seconds to make the kept spectra, and of one MRA iteration on them (distances + pairs)."""
    start = time.perf_counter()
    spectra = options.spectra(images, mask_radius=mask_radius)
    made = time.perf_counter() - start
    start = time.perf_counter()
    distances = options.align(spectra, references, mode="distances", mask_radius=mask_radius)
    options.align_pairs(spectra, references, distances.argmin(1), mask_radius=mask_radius)
    return made, time.perf_counter() - start


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
    parser.add_argument("--sweep", action="store_true", help="(d): time of (a″) for N/4, N/2, N × K = 10, 20, 50, 100")
    parser.add_argument(
        "--no-refine", action="store_true",
        help="grid poses only (same distances; what the clustering loop needs); refinement adds about 10 %% on CPU",
    )
    args = parser.parse_args()
    sampling = dict(n_angles=args.n_angles, max_shift=3.0, shift_step=1.0, mirror=False)
    refine = not args.no_refine
    n_shifts = shift_grid(3.0, 1.0).shape[0]
    m, n, k = args.n_angles, args.n_images, args.n_references

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print("| run | N × K × M × T | time s | poses/s | GEMM rate | peak RSS / GPU mem | threads | load 1/5/15 min | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    images = _stack(n, args.box, 0, "cpu")
    references = _stack(k, args.box, 1, "cpu")
    radii = args.box // 2
    start = time.perf_counter()
    align(images, references, memory_bytes=args.memory_bytes, refine=refine, **sampling)
    seconds = time.perf_counter() - start
    print(_row("(a) polar, CPU", n, k, m, n_shifts, seconds, _rss(), f"refine={refine}, every pair",
               _gemm_share(n, k, m, n_shifts, radii, seconds)))
    start = time.perf_counter()
    align(images, references, memory_bytes=args.memory_bytes, refine=refine, mode="best", **sampling)
    seconds = time.perf_counter() - start
    print(_row("(a′) polar, best mode", n, k, m, n_shifts, seconds, _rss(),
               f"refine={refine}, best pair only", _gemm_share(n, k, m, n_shifts, radii, seconds)))
    options = AlignOptions(refine=refine, memory_bytes=args.memory_bytes, **sampling)
    mask_radius = args.box // 2 - 1
    kept = options.spectra_nbytes(args.box, n)
    if kept <= SPECTRA_CACHE_BYTES:
        made, seconds = _kept_iteration(images, references, options, mask_radius)
        print(_row("(a″) MRA iteration, kept spectra", n, k, m, n_shifts, seconds, _rss(),
                   f"distances + assigned pair; spectra made once in {made:.2f} s ({kept / 2**30:.2f} GiB)",
                   _gemm_share(n, k, m, n_shifts, radii, seconds)))
    else:
        print(f"| (a″) MRA iteration, kept spectra | - | - | - | - | - | - | - | skipped: "
              f"{kept / 2**30:.1f} GiB of spectra > SPECTRA_CACHE_BYTES; lower --n-images |")

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
        "(b) brute force, CPU", n, k, m, n_shifts, scaled, _rss(),
        f"measured {brute:.1f} s on {bi} × {bk}, scaled ×{n * k / (bi * bk):.0f}; "
        f"ratio {scaled / seconds:.0f}× slower; grid poses: angle within 1 step {same_angle:.0%}, "
        f"shift equal {same_shift:.0%}, best reference equal {best_agree:.0%}",
    ))

    if args.sweep:
        pool = references if k >= 100 else _stack(100, args.box, 1, "cpu")
        for sweep_n in (n // 4, n // 2, n):
            for sweep_k in (10, 20, 50, 100):
                made, seconds = _kept_iteration(images[:sweep_n], pool[:sweep_k], options, mask_radius)
                print(_row("(d) MRA iteration, kept spectra", sweep_n, sweep_k, m, n_shifts, seconds,
                           "-", f"spectra {made:.2f} s; {seconds / sweep_n * 1e3:.2f} ms/image"))
    if not torch.cuda.is_available():
        print("| (c) polar, CUDA | - | - | - | - | - | - | - | skipped: no CUDA |")
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
