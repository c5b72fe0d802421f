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
``memory_bytes`` (estimate in :func:`plan_chunks`); ``mode="best"`` keeps only the best
reference per image, so no mode ever holds N × K × poses.

Searching the same images again (every MRA iteration): steps 1–2 depend on the images and the
shift grid only, so :meth:`AlignOptions.spectra` makes them once (:class:`ShiftedSpectra`) and
:func:`align` takes them in place of the images. A clustering pass needs the N × K distances but
the pose of one pair per image only, so ``mode="distances"`` skips step 5's argmax and
refinement, and :func:`align_pairs` finds the pose against one given reference per image (its
GEMM has one column, or two with mirrors); ``mode="best"`` does the same for the best reference.
Both give the pose that ``mode="all"`` finds for that pair.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.ops.fourier import fft2c, frequency_grid, phase_shift
from ackmeans_torch.ops.polar import (
    angular_spectrum,
    check_polar_parameters,
    circular_mask,
    polar_transform,
    ring_weights,
)
from ackmeans_torch.ops.transform import Poses, apply_transform

_METRICS = ("l2", "ncc")
_MODES = ("all", "best", "distances")
_CPU_MEMORY_BYTES = 32 * 2**20  # small chunks stay in cache: faster on CPU than large ones
_DEVICE_MEMORY_BYTES = 2 * 2**30
#: bytes of :class:`ShiftedSpectra` (with their images) a caller keeps between searches of the
#: same images (``classify/mra.py``: across iterations); 2,000 images of 64 px take 1.6 GB
SPECTRA_CACHE_BYTES = 2 * 2**30


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

    def align(self, images: torch.Tensor | ShiftedSpectra, references: torch.Tensor, *,
              mask_radius: float, mode: str = "all") -> Alignment | BestAlignment | torch.Tensor:
        """:func:`align` with these options."""
        return align(images, references, mask_radius=mask_radius, mode=mode, **asdict(self))

    def align_pairs(self, images: torch.Tensor | ShiftedSpectra, references: torch.Tensor,
                    labels: torch.Tensor, *, mask_radius: float) -> Poses:
        """:func:`align_pairs` with these options."""
        return align_pairs(images, references, labels, self, mask_radius=mask_radius)

    def spectra_nbytes(self, box_size: int, n_images: int, *, itemsize: int = 4) -> int:
        """Bytes of the :class:`ShiftedSpectra` of ``n_images`` images of ``box_size`` px."""
        n_radii = (box_size // 2 - 1 if self.max_radius is None else self.max_radius) + 1
        n_shifts = shift_grid(self.max_shift, self.shift_step).shape[0]
        return n_images * ((self.n_angles // 2 + 1) * n_shifts * 2 * n_radii + 1) * itemsize

    def spectra(self, images: torch.Tensor, *, mask_radius: float) -> ShiftedSpectra:
        """The :class:`ShiftedSpectra` of ``images (N, L, L)`` for searches with these options
        and ``mask_radius`` (the same any number of times: :func:`align` accepts them in place of
        the images)."""
        setup = _Search(images, None, mask_radius=mask_radius, mode="distances", **asdict(self))
        n_radii = setup.weights.shape[0]
        freqs, n_shifts = self.n_angles // 2 + 1, setup.sampling.shifts.shape[0]
        lhs = images.new_empty((freqs, len(images), n_shifts, n_radii), dtype=setup.ramps.dtype)
        norm2 = images.new_empty(len(images))
        for start, _, part in setup.chunks(images, out=lhs):
            norm2[start : start + len(part)] = part
        return ShiftedSpectra(lhs=torch.view_as_real(lhs).view(freqs, -1, 2 * n_radii),
                              norm2=norm2, search=setup.key, box_size=images.shape[-1])


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


def _shift_ramps(n_radii: int, n_angles: int, box_size: int, shifts: torch.Tensor) -> torch.Tensor:
    """``(M/2, T, R)`` phase ramps ``exp(+2πi k·t)`` on the half-circle polar grid, angle first
    (:func:`_half_spectra`): multiplying an image's samples by ramp t shifts the image content by
    ``−t`` (``ops.fourier`` convention)."""
    theta = torch.arange(n_angles // 2, device=shifts.device, dtype=shifts.dtype) * (2 * math.pi / n_angles)
    radii = torch.arange(n_radii, device=shifts.device, dtype=shifts.dtype)
    kx = torch.cos(theta)[:, None] * radii[None] / box_size  # (M/2, R) cycles/px
    ky = torch.sin(theta)[:, None] * radii[None] / box_size
    phase = 2 * math.pi * (kx[:, None] * shifts[None, :, 0, None] + ky[:, None] * shifts[None, :, 1, None])
    return torch.polar(torch.ones_like(phase), phase)


def _even_odd_order(operand: torch.Tensor) -> torch.Tensor:
    """The operand ``(M/2+1, R, C)`` with its frequencies reordered as the image side of the GEMM
    produces them (:func:`_correlate`): even ``n = 2j`` first, scaled by 2, then odd ``n = 2j+1``,
    scaled by 2i. With ``v`` the half-circle samples and ``h = M/2``, the full-circle angular
    spectrum is ``X̂(2j) = 2 Σ_m Re v_m e^{-2πi jm/h}`` and ``X̂(2j+1) = 2i Σ_m Im v_m e^{-2πi m/M}
    e^{-2πi jm/h}`` (Hermitian half, ``ops/polar.py``): one real and one complex FFT of length
    M/2 instead of a complex FFT of length M, and no full circle in memory."""
    return torch.cat([2 * operand[0::2], 2j * operand[1::2]])


def _half_spectra(values: torch.Tensor, ramps: torch.Tensor, twiddle: torch.Tensor,
                  out: torch.Tensor) -> torch.Tensor:
    """Full-circle angular spectra of half-circle samples ``values (B, R, M/2)`` shifted by every
    ``ramps (M/2, T, R)`` (:func:`_shift_ramps`), in even-odd order and without the factors 2 and
    2i (:func:`_even_odd_order`, which puts them on the references), written into ``out (M/2 + 1,
    B, T, R)`` complex, the GEMM layout: ``[rfft(Re v), fft(Im v · twiddle)[: number of odd n ≤
    M/2]]``. The angle axis is the outermost one throughout, so both FFTs (along it) write their
    frequencies as contiguous slabs of ``out`` (measured 2× faster than FFTs along the last axis
    and a transposing copy). Returns ``out``."""
    half = values.shape[-1]
    shifted = values.new_empty((half, values.shape[0], *ramps.shape[1:]))  # (M/2, B, T, R)
    shifted = torch.view_as_real(torch.mul(values.permute(2, 0, 1)[:, :, None], ramps[:, None], out=shifted))
    n_even = half // 2 + 1
    out[:n_even] = torch.fft.rfft(shifted[..., 0], dim=0)
    out[n_even:] = torch.fft.fft(shifted[..., 1] * twiddle[:, None, None, None], dim=0)[: out.shape[0] - n_even]
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


def _correlation(lhs: torch.Tensor, real_operand: torch.Tensor, sampling: _Sampling) -> torch.Tensor:
    """Correlation ``(B, T, C, M)`` at every grid shift and angle of a chunk of B images, given as
    their shifted angular spectra ``lhs (M/2+1, B·T, 2R)`` (:func:`_image_side`), against C
    columns (weighted conjugate angular spectra of references, and of their mirrors) given in
    even-odd frequency order (:func:`_even_odd_order`) as ``real_operand (M/2+1, 2R, 2C)``
    (:func:`_real_operand`).

    Layout choices (measured on the 2-core bench CPU, one thread): the GEMM as one real ``bmm``
    over frequencies; its output reordered so that the ``irfft`` runs along the contiguous last
    axis (2–3× faster than along the strided frequency axis)."""
    freqs, rows, _ = lhs.shape
    n_shifts, n_angles = sampling.shifts.shape[0], sampling.n_angles
    cols = real_operand.shape[-1] // 2
    product = torch.bmm(lhs, real_operand)
    product = torch.view_as_complex(product.view(freqs, rows, cols, 2)).permute(1, 2, 0)
    corr = torch.fft.irfft(_natural_order(product), n=n_angles, dim=-1)  # (B·T, C, M)
    return corr.view(rows // n_shifts, n_shifts, cols, n_angles)


def _pair_correlation(lhs: torch.Tensor, pair_operand: torch.Tensor, labels: torch.Tensor,
                      sampling: _Sampling) -> torch.Tensor:
    """:func:`_correlation` of each image of the chunk against its own reference only:
    ``pair_operand (M/2+1, K, 2R, 2c)`` holds each reference's ``c`` columns (itself, and its
    mirror), ``labels (B,)`` picks one per image → ``(B, T, c, M)``."""
    freqs, rows, width = lhs.shape
    n_shifts, n_angles = sampling.shifts.shape[0], sampling.n_angles
    n_images, cols = rows // n_shifts, pair_operand.shape[-1] // 2
    operand = pair_operand[:, labels]  # (F, B, 2R, 2c)
    product = lhs.new_empty((freqs, n_images, n_shifts, 2 * cols))
    # per frequency, a batch of B small GEMMs (T × 2R) · (2R × 2c) on views of ``lhs`` (a slice of
    # kept spectra: one matmul over (F, B) would copy it)
    for f in range(freqs):
        torch.bmm(lhs[f].view(n_images, n_shifts, width), operand[f], out=product[f])
    product = torch.view_as_complex(product.view(freqs, n_images, n_shifts, cols, 2))
    corr = torch.fft.irfft(_natural_order(product.permute(1, 2, 3, 0)), n=n_angles, dim=-1)
    return corr  # (B, T, c, M)


def _peaks(corr: torch.Tensor, sampling: _Sampling) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best correlation of each image × column of ``corr (B, T, C, M)`` over shifts and angles,
    and its pose: ``(corr (B, C), angle (B, C) rad, shift (B, C, 2) px)`` (module docstring,
    step 5; refined when ``sampling.refine``)."""
    n_images, n_shifts, cols, n_angles = corr.shape
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


@dataclass(frozen=True)
class ShiftedSpectra:
    """The image side of a search (module docstring, steps 1–2), made once for images that are
    aligned many times (the images and the shift grid do not change between MRA iterations):
    ``lhs (M/2+1, N·T, 2R)`` real, each image's polar samples shifted by every grid shift, as
    angular spectra in the GEMM layout (``(M/2+1)·T·2R`` values per image: 815 KB for a 64 px
    image at the default sampling in float32), and their squared norms ``norm2 (N,)``.
    ``search`` holds the parameters they were made with; :func:`align` refuses them for another
    search. Made by :meth:`AlignOptions.spectra`."""

    lhs: torch.Tensor
    norm2: torch.Tensor
    search: tuple
    box_size: int

    def __len__(self) -> int:
        return self.norm2.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return self.lhs.numel() * self.lhs.element_size() + self.norm2.numel() * self.norm2.element_size()


class _Search:
    """What a search needs besides the images, made once per call: the sampling, the shift ramps,
    the ring weights, the reference operands and the chunk plan (``references`` None: the image
    side only, for :meth:`AlignOptions.spectra`)."""

    def __init__(self, images: torch.Tensor | ShiftedSpectra, references: torch.Tensor | None, *,
                 n_angles, max_shift, shift_step, mirror, mask_radius, max_radius, metric, refine,
                 memory_bytes, mode, pad) -> None:
        # given spectra, an empty image of their box, dtype and device stands for the images
        probe = images.norm2.new_empty((1, images.box_size, images.box_size)) \
            if isinstance(images, ShiftedSpectra) else images
        size = probe.shape[-1]
        refs, max_radius, mask_radius, shifts = _prepare(
            probe, probe if references is None else references, metric=metric, mode=mode, n_angles=n_angles,
            max_radius=max_radius, mask_radius=mask_radius, max_shift=max_shift,
            shift_step=shift_step)
        self.key = (size, str(probe.dtype), n_angles, max_radius, mask_radius, pad,
                    tuple(shifts.flatten().tolist()), metric)
        if isinstance(images, ShiftedSpectra) and images.search != self.key:
            raise InputError("these ShiftedSpectra were made for another search (sampling, mask or "
                             "metric); make them with the same AlignOptions and mask_radius")
        device, real = probe.device, probe.dtype
        self.metric, self.mirror, self.mode = metric, mirror, mode
        self.polar_kwargs = dict(n_angles=n_angles, max_radius=max_radius, mask_radius=mask_radius, pad=pad)
        n_radii = max_radius + 1
        self.weights = ring_weights(n_radii, n_angles, size, device=device, dtype=real)
        if metric == "ncc":
            self.weights[0] = 0  # the zero frequency (mean) takes no part in NCC
        twiddle = torch.polar(torch.ones(n_angles // 2, device=device, dtype=real),
                              torch.arange(n_angles // 2, device=device, dtype=real) * (-2 * math.pi / n_angles))
        self.sampling = _Sampling(n_angles, shifts, int(round(math.sqrt(shifts.shape[0]))),
                                  float(shift_step), refine, twiddle)
        self.ramps = _shift_ramps(n_radii, n_angles, size, shifts)
        if memory_bytes is None:
            memory_bytes = _CPU_MEMORY_BYTES if device.type == "cpu" else _DEVICE_MEMORY_BYTES
        self.columns = 2 if mirror else 1
        self.chunk_images, self.chunk_refs = plan_chunks(
            n_radii=n_radii, n_angles=n_angles, n_shifts=shifts.shape[0],
            n_references=1 if references is None else refs.shape[0],
            columns_per_reference=self.columns, itemsize=probe.element_size(),
            memory_bytes=memory_bytes, refine=refine and mode == "all")
        # the polar transform runs on larger blocks than the GEMM chunks: it is cheap per image but
        # pays a fixed cost per call (padded FFT of 4·(pad·L)² bytes per image and complex element)
        self.polar_block = max(self.chunk_images, min(1024, memory_bytes // (4 * (pad * size) ** 2 * 2 * probe.element_size())))
        # a kept chunk of spectra against one reference each: the GEMM output twice (complex),
        # the correlation and the refinement's temporaries, and each image's reference operand
        freqs, itemsize = n_angles // 2 + 1, probe.element_size()
        per_pair = self.columns * (shifts.shape[0] * (4 * freqs + n_angles) + 3 * n_angles
                                   + freqs * 4 * n_radii) * itemsize
        self.pair_chunk = max(1, memory_bytes // per_pair)
        if references is None:
            return
        ref_polar = polar_transform(refs, **self.polar_kwargs)
        self.ref_norm2 = 2 * ((ref_polar.values.abs() ** 2).sum(-1) * self.weights).sum(-1)  # (K,)
        self.operand = (angular_spectrum(ref_polar.values).conj() * self.weights[:, None]).permute(2, 1, 0).contiguous()  # (F, R, K)
        # the real GEMM operand of each reference chunk is built once, not once per image chunk
        self.real_parts = [
            _real_operand(_even_odd_order(torch.cat([part, part.conj()], dim=-1) if mirror else part))
            for part in self.operand.split(self.chunk_refs, dim=-1)
        ]

    def pair_operand(self) -> torch.Tensor:
        """``(M/2+1, K, 2R, 2c)``: each reference's columns (itself, then its mirror), for
        :func:`_pair_correlation`."""
        columns = torch.stack([self.operand, self.operand.conj()], dim=-1) if self.mirror \
            else self.operand[..., None]  # (F, R, K, c)
        freqs, n_radii, k, c = columns.shape
        real = _real_operand(_even_odd_order(columns.reshape(freqs, n_radii, k * c)))
        return real.view(freqs, 2 * n_radii, k, 2 * c).permute(0, 2, 1, 3).contiguous()

    def chunks(self, images: torch.Tensor | ShiftedSpectra, out: torch.Tensor | None = None, *,
               pairs: bool = False):
        """Yield ``(start, lhs (M/2+1, B·T, 2R), norm2 (B,))`` per chunk of ``chunk_images``
        images: views of given :class:`ShiftedSpectra` (chunks of ``pair_chunk`` images with
        ``pairs``), or made from ``images`` (into ``out (M/2+1, N, T, R)`` complex when given,
        else into a new tensor per chunk)."""
        n_shifts = self.sampling.shifts.shape[0]
        if isinstance(images, ShiftedSpectra):
            step = self.pair_chunk if pairs else self.chunk_images
            for start in range(0, len(images), step):
                stop = min(len(images), start + step)
                yield start, images.lhs[:, start * n_shifts : stop * n_shifts], images.norm2[start:stop]
            return
        freqs = self.sampling.n_angles // 2 + 1
        for block_start in range(0, images.shape[0], self.polar_block):
            block = polar_transform(images[block_start : block_start + self.polar_block], **self.polar_kwargs)
            block_norm2 = 2 * ((block.values.abs() ** 2).sum(-1) * self.weights).sum(-1)
            n_radii = block.values.shape[1]
            for start in range(0, block.values.shape[0], self.chunk_images):
                values = block.values[start : start + self.chunk_images]
                first = block_start + start
                lhs = values.new_empty((freqs, values.shape[0], n_shifts, n_radii)) if out is None \
                    else out[:, first : first + values.shape[0]]
                _half_spectra(values, self.ramps, self.sampling.twiddle, lhs)
                yield first, torch.view_as_real(lhs).view(freqs, -1, 2 * n_radii), block_norm2[start : start + self.chunk_images]

    def distance(self, corr: torch.Tensor, x_norm2: torch.Tensor, r_norm2: torch.Tensor) -> torch.Tensor:
        """Aligned distances ``(B, C)`` from the best correlations ``corr (B, C)``."""
        if self.metric == "l2":
            return x_norm2[:, None] + r_norm2 - 2 * corr
        tiny = torch.finfo(corr.dtype).tiny
        return 1 - corr / torch.sqrt(x_norm2[:, None] * r_norm2).clamp_min(tiny)

    def pair_poses(self, lhs: torch.Tensor, x_norm2: torch.Tensor, pair_operand: torch.Tensor,
                   labels: torch.Tensor) -> Poses:
        """Each image's pose and distance against reference ``labels (B,)`` only."""
        corr, angle, shift = _peaks(_pair_correlation(lhs, pair_operand, labels, self.sampling), self.sampling)
        dist = self.distance(corr, x_norm2, self.ref_norm2[labels, None])  # (B, c)
        dist, pick = dist.min(dim=1)  # c = 2: the better of the reference and its mirror
        rows = torch.arange(len(labels), device=labels.device)
        return Poses(angle=angle[rows, pick], shift=shift[rows, pick], mirror=pick.bool(), distance=dist)


def align(
    images: torch.Tensor | ShiftedSpectra,
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
) -> Alignment | BestAlignment | torch.Tensor:
    """Align every image ``(N, L, L)`` (or their :class:`ShiftedSpectra`) to every reference
    ``(K, L, L)`` (module docstring).

    Sampling: ``n_angles`` M on the full circle (even), shifts ``±max_shift`` px in steps of
    ``shift_step`` px on x and y, mirrors when ``mirror``. Band and mask: ``max_radius`` Fourier px
    and ``mask_radius`` px (defaults ``L // 2 - 1``; ``ops.polar.polar_transform``, ``pad``).
    ``memory_bytes`` bounds the chunk temporaries (default 32 MiB on CPU, where cache-sized chunks
    are fastest, 2 GiB on other devices). Runs on the images' device in their precision
    (references are cast to it). ``mode="all"`` → :class:`Alignment` (every pair's pose);
    ``"best"`` → :class:`BestAlignment` (ties go to the lower reference index; only the best
    pair's pose is refined); ``"distances"`` → the ``(N, K)`` distances alone (no pose).
    """
    search = _Search(images, references, n_angles=n_angles, max_shift=max_shift,
                     shift_step=shift_step, mirror=mirror, mask_radius=mask_radius,
                     max_radius=max_radius, metric=metric, refine=refine,
                     memory_bytes=memory_bytes, mode=mode, pad=pad)
    n, k = len(images), references.shape[0]
    like, columns, chunk_refs = search.ref_norm2, search.columns, search.chunk_refs
    device = like.device
    distances = like.new_empty((n, k))
    if mode == "all":
        angles = like.new_empty((n, k))
        shifts_out = like.new_empty((n, k, 2))
        mirrors = torch.zeros((n, k), dtype=torch.bool, device=device)
    elif mode == "best":
        poses = Poses.zeros(n, device=device, dtype=like.dtype)
        pair_operand = search.pair_operand()

    for start, lhs, x_norm2 in search.chunks(images):
        rows = slice(start, start + x_norm2.shape[0])
        for k0 in range(0, k, chunk_refs):
            kc = min(chunk_refs, k - k0)
            corr = _correlation(lhs, search.real_parts[k0 // chunk_refs], search.sampling)
            r_norm2 = search.ref_norm2[k0 : k0 + kc].repeat(columns)
            if mode != "all":
                dist = search.distance(corr.amax(dim=-1).amax(dim=1), x_norm2, r_norm2)
                distances[rows, k0 : k0 + kc] = dist.view(-1, columns, kc).amin(dim=1)
                continue
            best, angle, shift = _peaks(corr, search.sampling)
            dist = search.distance(best, x_norm2, r_norm2)
            is_mirror = torch.zeros_like(dist, dtype=torch.bool)
            if mirror:  # columns [refs, mirrored refs] → the better of the two per reference
                dist, pick = dist.view(-1, 2, kc).min(dim=1)
                angle = angle.view(-1, 2, kc).gather(1, pick[:, None]).squeeze(1)
                shift = shift.view(-1, 2, kc, 2).gather(1, pick[:, None, :, None].expand(-1, 1, -1, 2)).squeeze(1)
                is_mirror = pick.bool()
            distances[rows, k0 : k0 + kc] = dist
            angles[rows, k0 : k0 + kc] = angle
            shifts_out[rows, k0 : k0 + kc] = shift
            mirrors[rows, k0 : k0 + kc] = is_mirror
        if mode == "best":  # the distances of this chunk are complete: pose of the best pair only
            best_dist, best_ref = distances[rows].min(dim=1)
            found = search.pair_poses(lhs, x_norm2, pair_operand, best_ref)
            poses.put(torch.arange(rows.start, rows.stop, device=device),
                      replace(found, distance=best_dist))

    if mode == "all":
        return Alignment(distances=distances, angle=angles, shift=shifts_out, mirror=mirrors)
    if mode == "best":
        return BestAlignment(reference=distances.argmin(dim=1), distance=poses.distance,
                             angle=poses.angle, shift=poses.shift, mirror=poses.mirror)
    return distances


def align_pairs(images: torch.Tensor | ShiftedSpectra, references: torch.Tensor,
                labels: torch.Tensor, search: AlignOptions, *, mask_radius: float | None = None) -> Poses:
    """The pose and distance of each image ``(N, L, L)`` (or their :class:`ShiftedSpectra`)
    against its own reference ``references[labels[i]]`` only (``labels (N,)`` int64): the pose
    :func:`align` ``mode="all"`` finds for that pair, at ``1/K`` of the references' cost."""
    labels = labels.to(torch.long)
    if labels.shape != (len(images),):
        raise InputError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < references.shape[0]:
        raise InputError(f"labels must be in [0, {references.shape[0]}) (one per image)")
    setup = _Search(images, references, mask_radius=mask_radius, mode="best", **asdict(search))
    pair_operand = setup.pair_operand()
    poses = Poses.zeros(len(images), device=setup.ref_norm2.device, dtype=setup.ref_norm2.dtype)
    for start, lhs, x_norm2 in setup.chunks(images, pairs=True):
        rows = torch.arange(start, start + x_norm2.shape[0], device=labels.device)
        poses.put(rows, setup.pair_poses(lhs, x_norm2, pair_operand, labels[rows]))
    return poses


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
