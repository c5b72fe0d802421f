"""Multi-reference alignment by polar Fourier correlation ("Alignment" in DESIGN.md; the MRA
dissimilarity of the ACK-means paper: "the distance between an image and a reference is the
minimum over all relative rotations and translations").

For images ``x (N, L, L)`` and references ``μ (K, L, L)`` it finds, per pair, the pose
``T = S_t ∘ R_a ∘ F^m`` (``ops/transform.py``: the reference moves onto the image) on a grid of
``M`` angles × shifts ``{-S … S}·step`` in x and y (× mirror) that minimises

    d(x, μ) = min_T ‖x_B − T(μ)_B‖² = ‖x_B‖² + ‖μ_B‖² − 2 max_T corr(x, T μ),

where ``x_B`` is the image multiplied by the circular mask and band-limited to ``|k| ≤ max_radius
+ ½`` (Fourier px), and every norm and correlation is the weighted sum over the polar grid
(``ops/polar.py``: ring weight = annulus area, Parseval). The mask is applied to the reference
before it is transformed (it turns with it, and moves with it by at most ``max_shift``), so
``‖T μ_B‖ = ‖μ_B‖`` for every pose. ``metric="ncc"`` gives instead ``1 − max_T NCC`` with
``NCC = corr / (‖x_B‖ ‖μ_B‖)`` and the zero frequency left out of all three (means removed).

How it is computed (per chunk of images × references):
1. the image's polar samples are multiplied by the phase ramp ``exp(+2πi k·t)`` of every shift
   candidate (shifting the image by ``−t`` is shifting the reference by ``+t``; no resampling).
   The shifts stay on the image side: the pose is ``S_t ∘ R_a`` with ``t`` on the grid, and a
   shift of the reference before the rotation, ``R_a ∘ S_u = S_{R_a u} ∘ R_a``, would put the
   reported shift ``R_a u`` off the grid, so it is not the same search;
2. FFT along the angle axis, Hermitian half n = 0 … M/2 (``ops/polar.py``), as one real and one
   complex FFT of length M/2 (:func:`_half_spectra`);
3. per angular frequency n, one GEMM over radii, ``C[n, (b,t), k] = Σ_r X̂_t[b, r, n] · w_r conj
   M̂[k, r, n]``, run as a real ``bmm`` (:func:`_real_operand`); the mirrored references need no
   transform: their angular spectrum is ``conj M̂`` (a mirror maps θ → π − θ), so their operand
   is the conjugate of the same matrix, in the same GEMM;
4. ``irfft`` along n gives the correlation at all M angles, ``c[s] = Σ_r w_r Σ_m X_m conj
   M_{m−s}`` (reference turned by ``a = 2π s / M``);
5. max over angles (``amax``), then over shifts; the argmax angle is found on the winning shift
   only. With ``refine`` the shift is refined by a parabola through the peak and its grid
   neighbours on each axis; the correlation at every angle is then interpolated to that sub-pixel
   shift (biquadratic through the 3 × 3 grid shifts around the peak, already computed), its
   argmax angle taken and refined by a parabola. Distances are the grid optimum (not
   interpolated), which is what the brute-force search reproduces.

Memory: the work is cut into chunks of images × references whose temporaries fit
``memory_bytes`` (estimate in :func:`plan_chunks`); ``mode="best"`` keeps only the running best
reference per image, so neither mode ever holds N × K × poses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.ops.fourier import fft2c, frequency_grid, phase_shift
from ackmeans_torch.ops.polar import (
    PolarSpectra,
    angular_spectrum,
    check_polar_parameters,
    circular_mask,
    polar_transform,
)
from ackmeans_torch.ops.transform import Poses, apply_transform

_METRICS = ("l2", "ncc")
_MODES = ("all", "best")
_CPU_MEMORY_BYTES = 32 * 2**20  # small chunks stay in cache: faster on CPU than large ones
_DEVICE_MEMORY_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Alignment:
    """Every image against every reference (``mode="all"``).

    distances: ``(N, K)`` aligned squared distances (pixel value² units) or ``1 − NCC``.
    angle: ``(N, K)`` radians in [0, 2π); shift: ``(N, K, 2)`` px (x, y); mirror: ``(N, K)`` bool.
    The pose ``(angle, shift, mirror)`` of pair (i, j) maps reference j onto image i
    (``ops.transform.apply_transform(references[j], angle, shift, mirror) ≈ images[i]``).
    """

    distances: torch.Tensor
    angle: torch.Tensor
    shift: torch.Tensor
    mirror: torch.Tensor

    def select(self, labels: torch.Tensor) -> Poses:
        """The pose of each image ``i`` against reference ``labels[i]`` (N,)."""
        rows = torch.arange(labels.shape[0], device=labels.device)
        return Poses(angle=self.angle[rows, labels], shift=self.shift[rows, labels],
                     mirror=self.mirror[rows, labels], distance=self.distances[rows, labels])


@dataclass(frozen=True)
class BestAlignment:
    """The best reference per image (``mode="best"``): ``reference (N,)`` int64, ``distance
    (N,)``, ``angle (N,)`` rad, ``shift (N, 2)`` px, ``mirror (N,)`` bool (as :class:`Alignment`)."""

    reference: torch.Tensor
    distance: torch.Tensor
    angle: torch.Tensor
    shift: torch.Tensor
    mirror: torch.Tensor

    @property
    def poses(self) -> Poses:
        """Each image's pose against its best reference."""
        return Poses(angle=self.angle, shift=self.shift, mirror=self.mirror,
                     distance=self.distance)


@dataclass(frozen=True, kw_only=True)
class AlignOptions:
    """The search of :func:`align` (its keyword names), validated when made: ``n_angles`` on the
    full circle (even, ≥ 4), shifts ``±max_shift`` px in steps of ``shift_step`` px, ``mirror``,
    ``max_radius`` Fourier px (None: ``L // 2 − 1``), ``metric`` ("l2", the paper's aligned
    squared distance, or "ncc"), ``refine`` (sub-step refinement of the poses), ``memory_bytes``
    (chunk budget; None: 32 MiB on CPU, 2 GiB on a GPU) and ``pad`` (polar oversampling)."""

    n_angles: int = 128
    max_shift: float = 3.0
    shift_step: float = 1.0
    mirror: bool = False
    max_radius: int | None = None
    metric: str = "l2"
    refine: bool = True
    memory_bytes: int | None = None
    pad: int = 2

    def __post_init__(self) -> None:
        check_int("align.n_angles", self.n_angles, 4)
        if self.n_angles % 2:
            raise InputError(f"align.n_angles={self.n_angles} must be even (angles on the full "
                             "circle)")
        check_number("align.max_shift", self.max_shift, 0.0)
        check_number("align.shift_step", self.shift_step, 1e-6)
        if self.max_radius is not None:
            check_int("align.max_radius", self.max_radius, 1)
        if self.metric not in _METRICS:
            raise InputError(f"align.metric={self.metric!r} must be one of {_METRICS}")
        for name in ("mirror", "refine"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"align.{name}={getattr(self, name)!r} must be true or false")
        if self.memory_bytes is not None:
            check_int("align.memory_bytes", self.memory_bytes, 1)
        check_int("align.pad", self.pad, 1)

    def align(self, images: torch.Tensor, references: torch.Tensor, *, mask_radius: float,
              mode: str = "all") -> Alignment | BestAlignment:
        """:func:`align` with these options."""
        return align(images, references, mask_radius=mask_radius, mode=mode, **asdict(self))


def shift_grid(max_shift: float, shift_step: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(T, 2)`` candidate shifts (x, y) px: ``{-S … S}·step`` on each axis with ``S =
    floor(max_shift / step)``, row-major in y (index ``iy · n + ix``)."""
    if not max_shift >= 0 or not shift_step > 0:
        raise InputError(f"max_shift={max_shift} must be >= 0 and shift_step={shift_step} > 0 (px)")
    half = int(math.floor(max_shift / shift_step + 1e-9))
    axis = torch.arange(-half, half + 1, device=device, dtype=dtype) * shift_step
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1)


def plan_chunks(
    *, n_radii: int, n_angles: int, n_shifts: int, n_references: int, columns_per_reference: int,
    itemsize: int, memory_bytes: int, refine: bool = True,
) -> tuple[int, int]:
    """``(images per chunk, references per chunk)`` whose temporaries fit ``memory_bytes``.

    Per image × shift: the shifted half-circle samples, their real and twiddled imaginary parts,
    the two FFTs and the GEMM operand (complex, R × (2M + M/2 + 2)); per image × shift ×
    reference column (×2 with mirrors): the GEMM output and its copy in natural frequency order
    (complex, 2 × (M/2 + 1)), the correlation at M angles and its max (real); with ``refine``,
    per image × column the gathered and interpolated correlations (real, 3M) and the correlation
    at the peak angle over shifts (real, T).
    """
    complex_size = 2 * itemsize
    freqs = n_angles // 2 + 1
    per_image = n_shifts * n_radii * (2 * n_angles + freqs + 1) * complex_size
    per_column = n_shifts * (2 * freqs * complex_size + (n_angles + 1) * itemsize)
    if refine:
        per_column += (3 * n_angles + n_shifts) * itemsize
    one = per_image + per_column * columns_per_reference
    if memory_bytes < one:
        raise InputError(
            f"memory_bytes={memory_bytes} is below the {one} bytes that one image against one "
            "reference needs at this sampling; raise memory_bytes"
        )
    refs = min(n_references, (memory_bytes - per_image) // (per_column * columns_per_reference))
    images = memory_bytes // (per_image + per_column * columns_per_reference * refs)
    return int(images), int(refs)


def _lagrange3(offset: torch.Tensor, node: int) -> torch.Tensor:
    """Weight of node ``node ∈ {−1, 0, 1}`` in the quadratic interpolation at ``offset`` (steps)."""
    if node == 0:
        return 1 - offset**2
    return 0.5 * offset * (offset + node)


def _parabolic_offset(minus: torch.Tensor, centre: torch.Tensor, plus: torch.Tensor) -> torch.Tensor:
    """Offset in [-½, ½] steps of the vertex of the parabola through (-1, minus), (0, centre),
    (1, plus); 0 where the three points do not bend down (flat or not a maximum)."""
    curvature = minus - 2 * centre + plus
    safe = torch.where(curvature < 0, curvature, torch.ones_like(curvature))
    offset = torch.where(curvature < 0, 0.5 * (minus - plus) / safe, torch.zeros_like(curvature))
    return offset.clamp(-0.5, 0.5)


@dataclass(frozen=True)
class _Sampling:
    n_angles: int
    shifts: torch.Tensor  # (T, 2)
    axis_len: int  # shifts per axis
    shift_step: float
    refine: bool
    twiddle: torch.Tensor  # (M/2,) exp(-2πi m / M), for the odd angular frequencies (_correlate)


def _shift_ramps(polar: PolarSpectra, shifts: torch.Tensor) -> torch.Tensor:
    """``(T, R, M/2)`` phase ramps ``exp(+2πi k·t)`` on the half-circle polar grid: multiplying an
    image's samples by ramp t shifts the image content by ``−t`` (``ops.fourier`` convention)."""
    half = polar.values.shape[-1]
    real = polar.weights.dtype
    theta = torch.arange(half, device=shifts.device, dtype=real) * (2 * math.pi / polar.n_angles)
    kx = polar.radii[:, None] * torch.cos(theta)[None] / polar.box_size  # cycles/px
    ky = polar.radii[:, None] * torch.sin(theta)[None] / polar.box_size
    phase = 2 * math.pi * (kx[None] * shifts[:, 0, None, None] + ky[None] * shifts[:, 1, None, None])
    return torch.polar(torch.ones_like(phase), phase)


def _even_odd_order(operand: torch.Tensor) -> torch.Tensor:
    """The operand ``(M/2+1, R, C)`` with its frequencies reordered as the image side of the GEMM
    produces them (:func:`_correlate`): even ``n = 2j`` first, scaled by 2, then odd ``n = 2j+1``,
    scaled by 2i. With ``v`` the half-circle samples and ``h = M/2``, the full-circle angular
    spectrum is ``X̂(2j) = 2 Σ_m Re v_m e^{-2πi jm/h}`` and ``X̂(2j+1) = 2i Σ_m Im v_m e^{-2πi m/M}
    e^{-2πi jm/h}`` (Hermitian half, ``ops/polar.py``): one real and one complex FFT of length
    M/2 instead of a complex FFT of length M, and no full circle in memory."""
    return torch.cat([2 * operand[0::2], 2j * operand[1::2]])


def _half_spectra(values: torch.Tensor, twiddle: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Full-circle angular spectrum of half-circle samples ``values (..., M/2)`` in even-odd order
    and without the factors 2 and 2i (:func:`_even_odd_order`, which puts them on the references),
    written into ``out (..., M/2 + 1)`` (any strides, so that the GEMM layout is written at once):
    ``[rfft(Re v), fft(Im v · twiddle)[: number of odd n ≤ M/2]]``. Returns ``out``."""
    n_even = values.shape[-1] // 2 + 1
    out[..., :n_even] = torch.fft.rfft(values.real, dim=-1)
    out[..., n_even:] = torch.fft.fft(values.imag * twiddle, dim=-1)[..., : out.shape[-1] - n_even]
    return out


def _natural_order(spectrum: torch.Tensor) -> torch.Tensor:
    """Undo the even-odd frequency order of the last axis (``M/2 + 1`` complex, contiguous out)."""
    n_even = (spectrum.shape[-1] + 1) // 2  # n = 0, 2, …, ≤ M/2
    out = spectrum.new_empty(spectrum.shape)
    out[..., 0::2] = spectrum[..., :n_even]
    out[..., 1::2] = spectrum[..., n_even:]
    return out


def _real_operand(operand: torch.Tensor) -> torch.Tensor:
    """``(F, 2R, 2C)`` real form of the complex GEMM operand ``O = c + i d`` ``(F, R, C)``: rows
    ``(r, re/im)`` and columns ``(column, re/im)`` interleaved, so that the real product of the
    interleaved image spectra ``[a, b]`` with it is ``[ac − bd, ad + bc]`` = the complex product,
    already laid out as complex numbers. torch's CPU complex matmul reaches about half the rate
    of a real ``bmm`` of the same flops (measured 8–23 vs 20–40 Gflop/s on the 2-core bench CPU)."""
    c, d = operand.real, operand.imag
    blocks = torch.stack([torch.stack([c, d], dim=-1), torch.stack([-d, c], dim=-1)], dim=2)  # (F, R, 2, C, 2)
    return blocks.reshape(operand.shape[0], 2 * operand.shape[1], 2 * operand.shape[2])


def _correlate(
    image_values: torch.Tensor,
    ramps: torch.Tensor,
    real_operand: torch.Tensor,
    sampling: _Sampling,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best correlation of a chunk of B images (half-circle samples ``(B, R, M/2)``), shifted by
    the ``ramps (T, R, M/2)`` (:func:`_shift_ramps`), against C columns (weighted conjugate angular
    spectra of references, and of their mirrors) given in even-odd frequency order
    (:func:`_even_odd_order`) as ``real_operand (M/2+1, 2R, 2C)`` (:func:`_real_operand`).
    Returns ``(corr (B, C), angle (B, C) rad, shift (B, C, 2) px)``.

    Layout choices (measured on the 2-core bench CPU, one thread): angular spectra from two FFTs of
    length M/2 (:func:`_half_spectra`); the GEMM as one real ``bmm`` over frequencies; its output
    reordered so that the ``irfft`` runs along the contiguous last axis (2–3× faster than along
    the strided frequency axis)."""
    n_images, n_radii, _ = image_values.shape
    n_shifts, n_angles = ramps.shape[0], sampling.n_angles
    freqs = n_angles // 2 + 1
    lhs = image_values.new_empty((freqs, n_images, n_shifts, n_radii))  # GEMM layout, even-odd order
    _half_spectra(image_values[:, None] * ramps[None], sampling.twiddle, lhs.permute(1, 2, 3, 0))
    product = torch.bmm(torch.view_as_real(lhs).view(freqs, n_images * n_shifts, 2 * n_radii), real_operand)
    cols = real_operand.shape[-1] // 2
    product = torch.view_as_complex(product.view(freqs, n_images * n_shifts, cols, 2)).permute(1, 2, 0)
    corr = torch.fft.irfft(_natural_order(product), n=n_angles, dim=-1)  # (B·T, C, M)
    corr = corr.view(n_images, n_shifts, cols, n_angles)
    best, t_idx = corr.amax(dim=-1).max(dim=1)  # (B, C): max over angles, then shifts
    at_t = corr.gather(1, t_idx.view(n_images, 1, cols, 1).expand(-1, -1, -1, n_angles)).squeeze(1)
    m_idx = at_t.argmax(dim=-1)  # (B, C)
    shift = sampling.shifts[t_idx]  # (B, C, 2)
    angle_steps = m_idx.to(best.dtype)
    if sampling.refine:
        at_m = corr.gather(3, m_idx.view(n_images, 1, cols, 1).expand(-1, n_shifts, -1, 1)).squeeze(-1)  # (B, T, C)
        per_axis = (t_idx % sampling.axis_len, t_idx // sampling.axis_len)
        offsets = []
        for index_on_axis, stride in zip(per_axis, (1, sampling.axis_len)):
            inside = (index_on_axis > 0) & (index_on_axis < sampling.axis_len - 1)
            lo = at_m.gather(1, (t_idx - stride).clamp(min=0)[:, None])[:, 0]
            hi = at_m.gather(1, (t_idx + stride).clamp(max=n_shifts - 1)[:, None])[:, 0]
            offsets.append(torch.where(inside, _parabolic_offset(lo, best, hi), torch.zeros_like(best)))
        delta = torch.stack(offsets, dim=-1)  # (B, C, 2) grid steps (x, y)
        shift = shift + delta * sampling.shift_step
        # The angle found at a grid shift is biased when the true shift lies between grid points
        # (off-centre content turns a shift error into an angle error), so the correlation at
        # every angle is interpolated to the refined shift — biquadratic (Lagrange) through the
        # 3 × 3 grid shifts around the peak, already computed — and its peak is searched again.
        pair_corr = torch.zeros_like(at_t)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                weight = _lagrange3(delta[..., 0], dx) * _lagrange3(delta[..., 1], dy)  # (B, C)
                index = (t_idx + dy * sampling.axis_len + dx).clamp(0, n_shifts - 1)  # weight 0 where clamped
                at = corr.gather(1, index.view(n_images, 1, cols, 1).expand(-1, -1, -1, n_angles)).squeeze(1)
                pair_corr += weight[..., None] * at
        m_idx = pair_corr.argmax(dim=-1)
        around = torch.stack([(m_idx - 1) % n_angles, m_idx, (m_idx + 1) % n_angles], dim=-1)
        minus, centre, plus = pair_corr.gather(-1, around).unbind(-1)
        angle_steps = m_idx.to(best.dtype) + _parabolic_offset(minus, centre, plus)
    angle = torch.remainder(angle_steps * (2 * math.pi / n_angles), 2 * math.pi)
    return best, angle, shift


def _validate(images: torch.Tensor, references: torch.Tensor, metric: str, mode: str) -> None:
    for name, stack in (("images", images), ("references", references)):
        if stack.ndim != 3 or stack.shape[-1] != stack.shape[-2] or not stack.is_floating_point():
            raise InputError(f"{name} must be a real floating tensor (N, L, L), got {tuple(stack.shape)} {stack.dtype}")
    if images.shape[-1] != references.shape[-1]:
        raise InputError(
            f"images are {images.shape[-1]} px and references {references.shape[-1]} px; both need the same box size"
        )
    if references.shape[0] < 1:
        raise InputError("references is empty; give at least one reference (K >= 1)")
    if images.device != references.device:
        raise InputError(f"images are on {images.device} and references on {references.device}; put both on one device")
    if metric not in _METRICS:
        raise InputError(f"metric={metric!r} must be one of {_METRICS}")
    if mode not in _MODES:
        raise InputError(f"mode={mode!r} must be one of {_MODES}")


def _prepare(images, references, *, metric, mode, n_angles, max_radius, mask_radius, max_shift,
             shift_step):
    """Checks shared by both searches → (references in the images' dtype, max_radius and
    mask_radius with their defaults, the (T, 2) shift grid)."""
    _validate(images, references, metric, mode)
    max_radius, mask_radius = check_polar_parameters(
        images.shape[-1], n_angles=n_angles, max_radius=max_radius, mask_radius=mask_radius)
    shifts = shift_grid(max_shift, shift_step, device=images.device, dtype=images.dtype)
    return references.to(images.dtype), max_radius, mask_radius, shifts


def align(
    images: torch.Tensor,
    references: torch.Tensor,
    *,
    n_angles: int = 128,
    max_shift: float = 3.0,
    shift_step: float = 1.0,
    mirror: bool = False,
    mask_radius: float | None = None,
    max_radius: int | None = None,
    metric: str = "l2",
    refine: bool = True,
    memory_bytes: int | None = None,
    mode: str = "all",
    pad: int = 2,
) -> Alignment | BestAlignment:
    """Align every image ``(N, L, L)`` to every reference ``(K, L, L)`` (module docstring).

    Sampling: ``n_angles`` M on the full circle (even), shifts ``±max_shift`` px in steps of
    ``shift_step`` px on x and y, mirrors when ``mirror``. Band and mask: ``max_radius`` Fourier px
    and ``mask_radius`` px (defaults ``L // 2 - 1``; ``ops.polar.polar_transform``, ``pad``).
    ``memory_bytes`` bounds the chunk temporaries (default 32 MiB on CPU, where cache-sized chunks
    are fastest, 2 GiB on other devices). Runs on the images' device in their precision
    (references are cast to it). ``mode="all"`` → :class:`Alignment`; ``"best"`` →
    :class:`BestAlignment` (ties go to the lower reference index).
    """
    references, max_radius, mask_radius, shifts = _prepare(
        images, references, metric=metric, mode=mode, n_angles=n_angles, max_radius=max_radius,
        mask_radius=mask_radius, max_shift=max_shift, shift_step=shift_step)
    device, real = images.device, images.dtype
    n, k, size = images.shape[0], references.shape[0], images.shape[-1]
    axis_len = int(round(math.sqrt(shifts.shape[0])))
    if memory_bytes is None:
        memory_bytes = _CPU_MEMORY_BYTES if device.type == "cpu" else _DEVICE_MEMORY_BYTES
    polar_kwargs = dict(n_angles=n_angles, max_radius=max_radius, mask_radius=mask_radius, pad=pad)

    refs = polar_transform(references, **polar_kwargs)
    weights = refs.weights.clone()
    if metric == "ncc":
        weights[0] = 0  # the zero frequency (mean) takes no part in NCC
    ref_norm2 = 2 * ((refs.values.abs() ** 2).sum(-1) * weights).sum(-1)  # (K,)
    operand = (angular_spectrum(refs.values).conj() * weights[:, None]).permute(2, 1, 0).contiguous()  # (F, R, K)
    ramps = _shift_ramps(refs, shifts)
    twiddle = torch.polar(torch.ones(n_angles // 2, device=device, dtype=real),
                          torch.arange(n_angles // 2, device=device, dtype=real) * (-2 * math.pi / n_angles))
    sampling = _Sampling(n_angles, shifts, axis_len, float(shift_step), refine, twiddle)
    columns = 2 if mirror else 1
    chunk_images, chunk_refs = plan_chunks(
        n_radii=max_radius + 1, n_angles=n_angles, n_shifts=shifts.shape[0], n_references=k,
        columns_per_reference=columns, itemsize=images.element_size(), memory_bytes=memory_bytes,
        refine=refine,
    )
    # the polar transform runs on larger blocks than the GEMM chunks: it is cheap per image but
    # pays a fixed cost per call (padded FFT of 4·(pad·L)² bytes per image and complex element)
    polar_block = max(chunk_images, min(1024, memory_bytes // (4 * (pad * size) ** 2 * 2 * images.element_size())))
    # the real GEMM operand of each reference chunk is built once, not once per image chunk
    real_parts = [
        _real_operand(_even_odd_order(torch.cat([part, part.conj()], dim=-1) if mirror else part))
        for part in operand.split(chunk_refs, dim=-1)
    ]

    if mode == "all":
        distances = images.new_empty((n, k))
        angles = images.new_empty((n, k))
        shifts_out = images.new_empty((n, k, 2))
        mirrors = torch.zeros((n, k), dtype=torch.bool, device=device)
    else:
        best_ref = torch.zeros(n, dtype=torch.long, device=device)
        best_dist = images.new_full((n,), math.inf)
        best_angle = images.new_zeros(n)
        best_shift = images.new_zeros((n, 2))
        best_mirror = torch.zeros(n, dtype=torch.bool, device=device)

    for block_start in range(0, n, polar_block):
        block = polar_transform(images[block_start : block_start + polar_block], **polar_kwargs)
        block_norm2 = 2 * ((block.values.abs() ** 2).sum(-1) * weights).sum(-1)
        for start in range(0, block.values.shape[0], chunk_images):
            values = block.values[start : start + chunk_images]
            x_norm2 = block_norm2[start : start + chunk_images]
            rows = slice(block_start + start, block_start + start + values.shape[0])
            for k0 in range(0, k, chunk_refs):
                kc = min(chunk_refs, k - k0)
                corr, angle, shift = _correlate(values, ramps, real_parts[k0 // chunk_refs], sampling)
                r_norm2 = ref_norm2[k0 : k0 + kc].repeat(columns)
                if metric == "l2":
                    dist = x_norm2[:, None] + r_norm2[None] - 2 * corr
                else:
                    dist = 1 - corr / torch.sqrt(x_norm2[:, None] * r_norm2[None]).clamp_min(torch.finfo(real).tiny)
                is_mirror = torch.zeros_like(dist, dtype=torch.bool)
                if mirror:  # columns [refs, mirrored refs] → the better of the two per reference
                    dist, pick = dist.view(-1, 2, kc).min(dim=1)
                    angle = angle.view(-1, 2, kc).gather(1, pick[:, None]).squeeze(1)
                    shift = shift.view(-1, 2, kc, 2).gather(1, pick[:, None, :, None].expand(-1, 1, -1, 2)).squeeze(1)
                    is_mirror = pick.bool()
                if mode == "all":
                    distances[rows, k0 : k0 + kc] = dist
                    angles[rows, k0 : k0 + kc] = angle
                    shifts_out[rows, k0 : k0 + kc] = shift
                    mirrors[rows, k0 : k0 + kc] = is_mirror
                    continue
                chunk_best, j = dist.min(dim=1)
                better = chunk_best < best_dist[rows]
                best_dist[rows] = torch.where(better, chunk_best, best_dist[rows])
                best_ref[rows] = torch.where(better, j + k0, best_ref[rows])
                best_angle[rows] = torch.where(better, angle.gather(1, j[:, None])[:, 0], best_angle[rows])
                chosen_shift = shift.gather(1, j[:, None, None].expand(-1, 1, 2))[:, 0]
                best_shift[rows] = torch.where(better[:, None], chosen_shift, best_shift[rows])
                best_mirror[rows] = torch.where(better, is_mirror.gather(1, j[:, None])[:, 0], best_mirror[rows])

    if mode == "all":
        return Alignment(distances=distances, angle=angles, shift=shifts_out, mirror=mirrors)
    return BestAlignment(reference=best_ref, distance=best_dist, angle=best_angle, shift=best_shift, mirror=best_mirror)


def align_brute_force(images: torch.Tensor, references: torch.Tensor, search: AlignOptions, *,
                      mask_radius: float | None = None) -> Alignment:
    """Reference search for validating :func:`align` (slow: O(N·K·M·T·L²)): every masked reference
    is mirrored and rotated in real space by every grid angle of ``search`` (``ops.transform``,
    bicubic), shifted by every grid shift (phase ramp) and compared with the masked image on the
    Cartesian DFT inside the same disc ``|k| ≤ max_radius + ½``. Same conventions as
    :func:`align` (``mode="all"``, grid poses, no refinement; ``search.refine``,
    ``memory_bytes`` and ``pad`` play no part)."""
    n_angles, metric, mirror = search.n_angles, search.metric, search.mirror
    references, max_radius, mask_radius, shifts = _prepare(
        images, references, metric=metric, mode="all", n_angles=n_angles,
        max_radius=search.max_radius, mask_radius=mask_radius, max_shift=search.max_shift,
        shift_step=search.shift_step)
    device, real = images.device, images.dtype
    n, k, size = images.shape[0], references.shape[0], images.shape[-1]
    mask = circular_mask(size, mask_radius, device=device, dtype=real)
    ky, kx = frequency_grid(size, device=device, dtype=real)
    band = torch.sqrt(kx**2 + ky**2) * size <= max_radius + 0.5
    if metric == "ncc":
        band &= (kx != 0) | (ky != 0)
    x_band = fft2c(images * mask)[:, band]  # (N, P)
    x_norm2 = (x_band.abs() ** 2).sum(-1) / size**2
    masked_refs = references * mask
    best = images.new_full((n, k), math.inf)
    angle = images.new_zeros((n, k))
    shift = images.new_zeros((n, k, 2))
    flips = torch.zeros((n, k), dtype=torch.bool, device=device)
    for flip in (False, True) if mirror else (False,):
        for step in range(n_angles):
            a = 2 * math.pi * step / n_angles
            turned = fft2c(apply_transform(masked_refs, a, torch.zeros(2, dtype=real), flip))
            moved = phase_shift(turned[:, None], shifts[None])[:, :, band]  # (K, T, P)
            r_norm2 = (moved.abs() ** 2).sum(-1) / size**2  # (K, T)
            corr = torch.einsum("np,ktp->nkt", x_band, moved.conj()).real / size**2
            if metric == "l2":
                dist = x_norm2[:, None, None] + r_norm2[None] - 2 * corr
            else:
                dist = 1 - corr / torch.sqrt(x_norm2[:, None, None] * r_norm2[None])
            value, t_idx = dist.min(dim=-1)
            better = value < best
            best = torch.where(better, value, best)
            angle = torch.where(better, torch.full_like(angle, a), angle)
            shift = torch.where(better[..., None], shifts[t_idx], shift)
            flips = torch.where(better, torch.full_like(flips, flip), flips)
    return Alignment(distances=best, angle=angle, shift=shift, mirror=flips)
