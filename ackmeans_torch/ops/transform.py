"""Rigid in-plane transforms of images — mirror, rotation, shift — with the conventions that
``ops/align.py`` reports (the one owner of these conventions).

Conventions
-----------
* Coordinates: ``x`` along the column index, ``y`` along the row index, origin at pixel
  ``c = (L // 2, L // 2)`` (as ``ops/fourier.py``).
* Mirror ``F``: ``x → -x`` about the centre column (pixel ``(c + d, y)`` goes to ``(c - d, y)``;
  for even L the column 0, which has no partner, maps onto itself). In Fourier space
  ``kx → -kx``, i.e. polar angle ``θ → π - θ``.
* Rotation ``R_a``: the content turns by ``a`` radians counter-clockwise when +y points up (the
  usual display of MRC images, row 0 at the bottom): a point on +x goes to +y at ``a = π/2``.
  ``(R_a x)(p) = x(R_{-a} p)``; its spectrum turns by the same ``a`` (polar ``θ → θ + a``).
* Shift ``S_t``: content moves by ``+t = (tx, ty)`` px (``ops.fourier.phase_shift``, circular).
* Order: ``T(a, t, m) = S_t ∘ R_a ∘ F^m`` — mirror first (when ``m``), then rotate about the
  centre, then shift. The aligner reports, for an image ``x`` and a reference ``μ``, the
  ``(a, t, m)`` that makes ``T(μ) ≈ x``: **the reference moves onto the image**. To bring images
  onto a reference frame (class averages), apply the inverse,
  ``T⁻¹ = F^m ∘ R_{-a} ∘ S_{-t}`` (``apply_transform(..., inverse=True)``).

A :class:`Poses` holds one such pose per image (and the aligned distance it was found with);
``poses.to_class_frame(images)`` applies ``T⁻¹`` to bring each image onto its reference.

Interpolation: rotations resample by bicubic convolution (``grid_sample``, zeros outside the
box); shifts are exact phase ramps; mirrors are exact index permutations.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.fourier import shift_images


def _per_image(value, n: int, tail: tuple[int, ...], *, like: torch.Tensor, dtype, name: str) -> torch.Tensor:
    """``value`` (scalar or tensor) broadcast to ``(n, *tail)`` on ``like``'s device."""
    tensor = torch.as_tensor(value, device=like.device, dtype=dtype)
    try:
        return tensor.expand(n, *tail)
    except RuntimeError:
        raise InputError(
            f"{name} of shape {tuple(tensor.shape)} does not broadcast to {(n, *tail)} (one per image)"
        ) from None


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 3 or images.shape[-1] != images.shape[-2] or not images.is_floating_point():
        raise InputError(f"images must be a real floating tensor (N, L, L), got {tuple(images.shape)} {images.dtype}")


def mirror_images(images: torch.Tensor, mirror) -> torch.Tensor:
    """Mirror ``x → -x`` about the centre column the images ``(N, L, L)`` whose flag ``mirror
    (N,)`` bool (or a scalar) is set."""
    _check_images(images)
    flags = _per_image(mirror, images.shape[0], (), like=images, dtype=torch.bool, name="mirror")
    size = images.shape[-1]
    # flip maps column j to L-1-j; the centre L//2 must map to itself, which for even L needs one
    # extra roll (j → L - j mod L).
    flipped = torch.roll(torch.flip(images, dims=(-1,)), shifts=1 - size % 2, dims=-1)
    return torch.where(flags[:, None, None], flipped, images)


def rotate_images(images: torch.Tensor, angle, *, interpolation: str = "bicubic") -> torch.Tensor:
    """Rotate images ``(N, L, L)`` by ``angle (N,)`` radians (or a scalar) counter-clockwise about
    pixel ``(L // 2, L // 2)`` (module docstring), resampling by ``interpolation``
    ("bicubic"/"bilinear"); pixels from outside the box are 0."""
    _check_images(images)
    n, size = images.shape[0], images.shape[-1]
    angles = _per_image(angle, n, (), like=images, dtype=images.dtype, name="angle")
    axis = torch.arange(size, device=images.device, dtype=images.dtype) - size // 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    cos, sin = torch.cos(angles)[:, None, None], torch.sin(angles)[:, None, None]
    # output pixel p samples the input at R_{-a} p
    src_x = cos * x + sin * y + size // 2
    src_y = -sin * x + cos * y + size // 2
    grid = torch.stack([src_x, src_y], dim=-1) * (2 / (size - 1)) - 1  # align_corners=True
    out = F.grid_sample(images[:, None], grid, mode=interpolation, padding_mode="zeros", align_corners=True)
    return out[:, 0]


def apply_transform(
    images: torch.Tensor,
    angle,
    shift,
    mirror,
    *,
    inverse: bool = False,
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """``T(a, t, m) = S_t ∘ R_a ∘ F^m`` applied to ``images (N, L, L)``, or ``T⁻¹`` when
    ``inverse`` (module docstring). ``angle (N,)`` rad, ``shift (N, 2)`` px (x, y), ``mirror (N,)``
    bool, each also accepted as one value for all images. Returns ``(N, L, L)``, images' dtype."""
    _check_images(images)
    n = images.shape[0]
    shifts = _per_image(shift, n, (2,), like=images, dtype=images.dtype, name="shift")
    angles = _per_image(angle, n, (), like=images, dtype=images.dtype, name="angle")
    if inverse:
        unshifted = shift_images(images, -shifts)
        return mirror_images(rotate_images(unshifted, -angles, interpolation=interpolation), mirror)
    rotated = rotate_images(mirror_images(images, mirror), angles, interpolation=interpolation)
    return shift_images(rotated, shifts)


@dataclass
class Poses:
    """The in-plane pose of each of N images in its class (module conventions: the class
    reference moved onto the image): ``angle (N,)`` rad, ``shift (N, 2)`` px (x, y), ``mirror
    (N,)`` bool, and the aligned ``distance (N,)`` to that reference."""

    angle: torch.Tensor
    shift: torch.Tensor
    mirror: torch.Tensor
    distance: torch.Tensor

    @classmethod
    def zeros(cls, n: int, *, device=None, dtype=torch.float32) -> Poses:
        """Identity poses of ``n`` images (distance 0)."""
        return cls(angle=torch.zeros(n, device=device, dtype=dtype),
                   shift=torch.zeros(n, 2, device=device, dtype=dtype),
                   mirror=torch.zeros(n, dtype=torch.bool, device=device),
                   distance=torch.zeros(n, device=device, dtype=dtype))

    def __len__(self) -> int:
        return self.angle.shape[0]

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def select(self, index: torch.Tensor) -> Poses:
        """The poses of images ``index`` (B,)."""
        return Poses(**{key: value[index] for key, value in self.as_dict().items()})

    def put(self, index: torch.Tensor, poses: Poses) -> None:
        """Set the poses of images ``index`` (B,) to ``poses`` (B entries), in place."""
        for key, value in poses.as_dict().items():
            getattr(self, key)[index] = value.to(getattr(self, key).dtype)

    def to(self, device) -> Poses:
        return Poses(**{key: value.to(device) for key, value in self.as_dict().items()})

    def to_class_frame(self, images: torch.Tensor) -> torch.Tensor:
        """``images (N, L, L)`` brought onto their class reference's frame (``T⁻¹``)."""
        return apply_transform(images, self.angle, self.shift, self.mirror, inverse=True)
