"""Our back-projection (``ops.projection.reconstruct``) against RELION's ``relion_reconstruct`` on
the same simulated particle STAR, both scored on the map the images were made from.

Per set (N particles, box, CTF or not): the 70S map (``../shared/data/volumes``, 5 Å/px)
Fourier-cropped to the box, N clean projections at directions spread over the half sphere (one
image per orientation centre) with uniform psi and ±2 px shifts, CTF with defocus 1–3 µm when
on, images not phase-flipped, written as ``particles.mrcs`` + RELION-4 ``particles.star`` by the
simulator's library calls (``Simulation.run``, ``write_stack``, ``write_particles``: what
``ackmeans-torch simulate`` does). Then, timed alone: ``reconstruct(open_source(star))`` (reading
the stack included) and ``relion_reconstruct --i particles.star --o rln.mrc [--ctf]`` run from the
STAR's folder. FSC (``ops.fourier.fsc``, shells in 1/L units) at the shells 0.5 × and 0.8 ×
Nyquist: ours with the truth, RELION's with the truth, ours with RELION's. Every row carries the
thread settings (torch threads, ``OMP_NUM_THREADS``; relion_reconstruct has one thread and no
``--j``) and the 1-minute load average before it, because on a shared machine timings mean
nothing without them. ``--curves`` also prints the whole FSC curves.

    python scripts/bench_reconstruct.py                      # 2,000 and 10,000 at 64 px
    python scripts/bench_reconstruct.py --sizes 2000 --box 32 --curves
"""

from __future__ import annotations

import argparse
import os

# one thread unless the caller says otherwise: set before torch starts OpenMP
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from ackmeans_torch.data.simulated import Simulation  # noqa: E402
from ackmeans_torch.data.stack import open_source  # noqa: E402
from ackmeans_torch.io.mrc import load_volume, write_stack  # noqa: E402
from ackmeans_torch.io.star import write_particles  # noqa: E402
from ackmeans_torch.ops.fourier import fourier_crop_volume, fsc  # noqa: E402
from ackmeans_torch.ops.projection import reconstruct  # noqa: E402

MAP = Path(__file__).resolve().parents[2] / "shared" / "data" / "volumes" / "ribosome70S_65px.mrc"


def write_set(folder: Path, n: int, box: int, with_ctf: bool) -> None:
    spec = Simulation(volume=str(MAP), voxel_size=5.0, box_size=box, n_centres=n, per_centre=1,
                      max_shift_px=2.0, ctf=with_ctf, phase_flip=False, snr=None)
    images, particles = spec.run(seed=1)
    particles = particles.assign(rlnImageName=[f"{i + 1:06d}@particles.mrcs" for i in range(n)])
    write_stack(folder / "particles.mrcs", images, float(particles["rlnImagePixelSize"].iloc[0]))
    write_particles(folder / "particles.star", particles)


def run_row(n: int, box: int, with_ctf: bool, truth: torch.Tensor, curves: bool) -> str:
    with tempfile.TemporaryDirectory(prefix="bench_reconstruct_") as tmp:
        folder = Path(tmp)
        write_set(folder, n, box, with_ctf)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        ours = reconstruct(open_source(folder / "particles.star", project_dir=folder))
        ours_s = time.perf_counter() - start
        command = ["nice", "-n", "10", "relion_reconstruct", "--i", "particles.star",
                   "--o", "rln.mrc", *(["--ctf"] if with_ctf else [])]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        relion_s = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        theirs, _ = load_volume(folder / "rln.mrc")
    pairs = {"ours-truth": fsc(ours, truth), "RELION-truth": fsc(theirs, truth),
             "ours-RELION": fsc(ours, theirs)}
    half, most = box // 4, int(0.8 * (box // 2))
    if curves:
        for name, curve in pairs.items():
            print(f"# N={n} box={box} ctf={with_ctf} {name}: "
                  + " ".join(f"{v:.3f}" for v in curve.tolist()))
    figures = " | ".join(f"{c[half]:.3f} / {c[most]:.3f}" for c in pairs.values())
    threads = f"torch {torch.get_num_threads()}, OMP {os.environ.get('OMP_NUM_THREADS')}; RELION 1"
    return (f"| {n:,} | {box} | {'yes' if with_ctf else 'no'} | {ours_s:.1f} | {relion_s:.1f} | "
            f"{figures} | {threads} | {load:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--curves", action="store_true", help="print the whole FSC curves")
    args = parser.parse_args()
    if shutil.which("relion_reconstruct") is None:
        raise SystemExit("relion_reconstruct is not on PATH (apt-get install relion)")
    volume, _ = load_volume(MAP, voxel_size=5.0)
    truth = fourier_crop_volume(volume, args.box)
    print(f"FSC columns: value at shell {args.box // 4} (0.5 × Nyquist) / shell "
          f"{int(0.8 * (args.box // 2))} (0.8 × Nyquist), shells in 1/L units")
    print("| N | box | CTF | ours (s) | RELION (s) | FSC ours–truth | FSC RELION–truth | "
          "FSC ours–RELION | threads | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for with_ctf in (False, True):
            print(run_row(n, args.box, with_ctf, truth, args.curves), flush=True)


if __name__ == "__main__":
    main()
