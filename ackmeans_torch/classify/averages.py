"""CTF-weighted (Wiener) class averages.

A phase-flipped image is ``X_i = |C_i| S + N_i`` in Fourier space (C_i its CTF, S the class's
signal), so the least-squares class average with a Wiener constant ε is

    Ŝ = Σ_i |C_i| X_i / (Σ_i C_i² + ε · n_j),

(``C_i`` instead of ``|C_i|`` for images that were never flipped): frequencies where the CTFs of
a class's images are weak are not divided out but damped, so the average recovers the amplitudes
that a plain mean of phase-flipped images leaves modulated. Images are brought into the class
frame with their poses (``ops/transform.py``, inverse); the weights C_i² turn and mirror with them
(the spectrum of a turned image is the turned spectrum; a shift leaves |C|² alone).

ε is the inverse of a spectral SNR per image: small for clean data, near 1/SNR for noisy data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ackmeans_torch.data.prepared import ctf_of, has_ctf
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.fourier import fft2c, ifft2c
from ackmeans_torch.ops.polar import circular_mask
from ackmeans_torch.ops.transform import Poses, apply_transform


def wiener_averages(prepared: ImageSource, labels: Tensor, poses: Poses, n_classes: int, *,
                    epsilon: float = 0.1, chunk_size: int = 1024) -> Tensor:
    """``(K, L', L')`` Wiener class averages (module docstring) of the preprocessed images of
    ``prepared`` (``data/prepared.py``) with ``labels (N,)`` 0-based and their ``poses`` in their
    class; masked like the plain averages."""
    particles = prepared.particles
    if not has_ctf(particles):
        raise InputError("ctf_averages=true needs CTF columns (rlnDefocusU, ...) in the particle "
                         "table; set ctf_averages=false")
    if not epsilon > 0:
        raise InputError(f"wiener_epsilon={epsilon} must be > 0")
    flipped = prepared.phase_flipped
    size, device = prepared.box_size, prepared.device
    numerator = torch.zeros(n_classes, size, size, dtype=torch.complex64, device=device)
    weight = torch.zeros(n_classes, size, size, device=device)
    for start in range(0, len(prepared), chunk_size):
        idx = np.arange(start, min(start + chunk_size, len(prepared)))
        images = prepared.images(idx)
        c = ctf_of(particles.iloc[idx], size=size, pixel_size=prepared.pixel_size, device=device)
        weighted = ifft2c(fft2c(images) * (c.abs() if flipped else c)).real
        index = torch.as_tensor(idx)
        lab, chunk = labels[index].to(device), poses.select(index).to(device)
        numerator.index_add_(0, lab, fft2c(chunk.to_class_frame(weighted)).to(numerator.dtype))
        turned = apply_transform(c * c, chunk.angle, torch.zeros_like(chunk.shift), chunk.mirror,
                                 inverse=True)
        weight.index_add_(0, lab, turned.clamp_min(0))
    counts = torch.bincount(labels.to(device), minlength=n_classes).to(weight.dtype)
    averages = ifft2c(numerator / (weight + epsilon * counts[:, None, None])).real
    return averages * circular_mask(size, prepared.mask_radius, device=device)
