"""Particle extraction: ours (``micrographs/extract.py``) against ``relion_preprocess --extract`` on
the same simulated micrographs and coordinates: particle counts, per-particle correlation, time.

Two settings: raw boxes (RELION without --norm; ours with normalise=false, edge=pad, RELION's edge
rule) and RELION's usual ones (--invert_contrast --norm --bg_radius, --scale to half the box; ours
invert_contrast, normalise, fourier_crop_to; RELION also subtracts a background ramp, we do not).
The micrograph simulation time is a row of its own.

    python scripts/bench_extract.py                 # 8 micrographs of 1024², ~150 particles each
    python scripts/bench_extract.py --n 40 --size 2048 --particles 600
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
import torch

from ackmeans_torch.io.coords import write_relion_autopick
from ackmeans_torch.micrographs.extract import ExtractOptions, extract_particles, write_extracted
from ackmeans_torch.micrographs.io import read_micrographs
from ackmeans_torch.micrographs.simulate import MicrographSimulation, simulate_micrographs, write_simulated


def _row(what: str, n: str, corr: str, seconds: float) -> str:
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"| {what} | {n} | {corr} | {seconds:.2f} | {torch.get_num_threads()} | {load} |"


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1) - a.mean((1, 2))[:, None]
    b = b.reshape(len(b), -1) - b.mean((1, 2))[:, None]
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="micrographs")
    parser.add_argument("--size", type=int, default=1024, help="micrograph side px")
    parser.add_argument("--particles", type=int, default=150, help="particles per micrograph")
    parser.add_argument("--box", type=int, default=64, help="extraction box px (the phantom's side)")
    args = parser.parse_args()
    if shutil.which("relion_preprocess") is None:
        raise SystemExit("relion_preprocess is not on PATH: install RELION to run this comparison")
    root = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    os.chdir(root)
    print("| step | particles (ours / RELION) | correlation min / median | seconds | threads | load 1/5/15 min |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    sim = simulate_micrographs(MicrographSimulation(n_micrographs=args.n, size=args.size, box_size=args.box,
                                                    particles_per_micrograph=args.particles), seed=0)
    print(_row(f"simulate {args.n} micrographs of {args.size}² px", str(sum(map(len, sim.truth.values()))), "",
               time.perf_counter() - t0))
    write_simulated(sim, root)
    rng = np.random.default_rng(0)
    picks = {}
    for name, truth in sim.truth.items():
        jitter = type(truth)(truth.centres + rng.uniform(-0.99, 0.99, truth.centres.shape), truth.box_size,
                             truth.scores)
        picks[name] = jitter
        write_relion_autopick(root / "Coords" / "Micrographs" / f"{name}_autopick.star", jitter)
    mics = read_micrographs("micrographs_ctf.star")
    half = args.box // 2
    settings = {
        "raw boxes": (ExtractOptions(box_size=args.box, normalise=False, edge="pad"), []),
        "invert + norm + scale to half": (
            ExtractOptions(box_size=args.box, invert_contrast=True, fourier_crop_to=half, background_radius=0.375 * half,
                           edge="pad"),
            ["--invert_contrast", "--norm", "--bg_radius", str(0.375 * half), "--scale", str(half)]),
    }
    for label, (options, flags) in settings.items():
        out = root / f"ours_{len(flags)}"
        t0 = time.perf_counter()
        stack, table = extract_particles(mics, picks, options)
        write_extracted(out, stack, table)
        ours_s = time.perf_counter() - t0
        part = f"Relion_{len(flags)}/"
        t0 = time.perf_counter()
        subprocess.run(["relion_preprocess", "--i", "micrographs_ctf.star", "--coord_dir", "Coords/", "--coord_suffix",
                        "_autopick.star", "--part_dir", part, "--part_star", part + "particles.star", "--extract",
                        "--extract_size", str(args.box), *flags], check=True, capture_output=True)
        relion_s = time.perf_counter() - t0
        relion = np.concatenate([mrcfile.read(f"{part}Micrographs/{m.name}.mrcs") for m in mics])
        corr = _corr(stack.numpy(), relion)
        counts = f"{len(stack)} / {len(relion)}"
        summary = f"{corr.min():.4f} / {np.median(corr):.4f}"
        print(_row(f"{label}: ours", counts, summary, ours_s))
        print(_row(f"{label}: relion_preprocess", counts, summary, relion_s))
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
