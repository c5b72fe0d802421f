"""Benchmark the paper-protocol simulation (ACK-means paper, "Benchmark with simulated data").

10,000 images at 65 px of the 70S ribosome map (../shared/data/volumes/ribosome70S_65px.mrc,
5 Å/px): 100 centres on a half sphere × 100 images, CTF with defocus 1–3 µm, SNR 1/10,
phase-flipped. Prints a table: the whole ``simulate_dataset`` call and its stages timed alone.
Falls back to the built-in 65 px phantom when ../shared is absent (said in the output).

    python scripts/bench_simulate.py [--device cuda] [--repeats 3] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ackmeans_torch.io.mrc import load_volume
from ackmeans_torch.ops.ctf import ctf, phase_flip
from ackmeans_torch.ops.fourier import ifft2c
from ackmeans_torch.ops.projection import FourierProjector
from ackmeans_torch.sim.dataset import simulate_dataset
from ackmeans_torch.sim.noise import add_gaussian_noise, noise_sigma
from ackmeans_torch.sim.views import random_rotations
from ackmeans_torch.sim.volume import phantom

MAP = Path(__file__).resolve().parents[2] / "shared" / "data" / "volumes" / "ribosome70S_65px.mrc"


def _timed(fn, repeats: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    device = torch.device(args.device)
    if MAP.is_file():
        volume, voxel = load_volume(MAP, voxel_size=5.0)
        source = MAP.name
    else:
        volume, voxel, source = phantom(65), 5.0, "built-in phantom (../shared absent)"
    volume = volume.to(device)
    n, size = 10_000, volume.shape[-1]

    rows = []
    total = _timed(lambda: simulate_dataset(volume, voxel, n_centres=100, per_centre=100, snr=0.1,
                                            defocus_range=(10000.0, 30000.0), phase_flip=True,
                                            seed=0, device=device, batch_size=args.batch_size),
                   args.repeats, device)
    rows.append(("simulate_dataset (all stages)", total))

    rotations = random_rotations(n, generator=torch.Generator().manual_seed(0)).float().to(device)
    projector = FourierProjector(volume)
    rows.append(("  3D padded FFT (once)", _timed(lambda: FourierProjector(volume), args.repeats, device)))

    def project_all():
        return [projector.spectra(rotations[i : i + args.batch_size]) for i in range(0, n, args.batch_size)]

    rows.append(("  central slices (trilinear)", _timed(project_all, args.repeats, device)))
    defocus = torch.linspace(10000.0, 30000.0, n)

    def ctfs():
        return [ctf(size=size, pixel_size=voxel, defocus_u=defocus[i : i + args.batch_size],
                    defocus_v=defocus[i : i + args.batch_size], defocus_angle=0.0, voltage=300.0,
                    spherical_aberration=2.7, amplitude_contrast=0.1, device=device)
                for i in range(0, n, args.batch_size)]

    rows.append(("  CTF evaluation", _timed(ctfs, args.repeats, device)))
    spectra, values = project_all(), ctfs()
    rows.append(("  × CTF + inverse FFT", _timed(lambda: [ifft2c(s * c).real for s, c in zip(spectra, values)], args.repeats, device)))
    clean = torch.cat([ifft2c(s * c).real for s, c in zip(spectra, values)]).cpu()
    rows.append(("  noise (σ from SNR, draw, add)", _timed(
        lambda: add_gaussian_noise(clean, noise_sigma(clean, 0.1), generator=torch.Generator().manual_seed(0)),
        args.repeats, device)))
    rows.append(("  phase flip", _timed(
        lambda: [phase_flip(clean[i : i + args.batch_size].to(device), values[i // args.batch_size])
                 for i in range(0, n, args.batch_size)], args.repeats, device)))

    print(f"paper protocol: {n} images, {size} px, map {source}, device {device}, "
          f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, best of {args.repeats}")
    print(f"{'stage':<34}{'seconds':>10}{'images/s':>12}")
    for name, seconds in rows:
        print(f"{name:<34}{seconds:>10.2f}{n / seconds:>12.0f}")


if __name__ == "__main__":
    main()
