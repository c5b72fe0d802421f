"""Template picker: normalised cross-correlation (NCC) of the micrograph with templates — 2D
class averages or projections of a map — at every in-plane angle of a grid, by FFT.

Templates ``(T, L, L)`` at ``template_pixel_size`` Å/px are Fourier-cropped to the binned working
scale (``base.py``), padded to a box of twice the particle diameter (room for the CTF's
delocalisation), turned through ``angle_step`` degrees (``ops/transform.rotate_images``) and,
when the micrograph's CTF and pixel size are known and ``apply_ctf`` is set, multiplied by that
CTF (``ops/ctf.ctf``, RELION conventions) — the templates then look like the particles do on
that micrograph. Each template is made zero-mean and unit-norm inside its circular mask, so

    NCC(x) = Σ_m t(m) I(x + m) / sqrt(N · var_N(I; x))

with the local variance of the image over the mask's N pixels at x from two more FFT
correlations (``Σ I``, ``Σ I²``). NCC lies in [-1, 1]; the score of a pixel is its best NCC over
templates and angles, and picks follow by non-maximum suppression at the particle distance.
Particles are dark on raw micrographs, so with ``contrast="dark"`` the templates (positive
density) are negated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.io.coords import PickSet
from ackmeans_torch.micrographs.io import CTF_KEYS
from ackmeans_torch.ops.ctf import ctf as ctf_values
from ackmeans_torch.ops.fourier import fft2c, fourier_crop, ifft2c
from ackmeans_torch.ops.transform import rotate_images
from ackmeans_torch.pickers.base import Picker

#: RELION keys of a micrograph's CTF (micrographs/io.py) -> keywords of ops.ctf.ctf
CTF_KEYWORDS = dict(zip(CTF_KEYS, ("defocus_u", "defocus_v", "defocus_angle", "voltage", "spherical_aberration",
                                   "amplitude_contrast")))


def projection_templates(volume: torch.Tensor, n_views: int) -> torch.Tensor:
    """``(n_views, L, L)`` projections of ``volume (L, L, L)`` along directions spread over the
    half sphere (``sim/views.half_sphere_points``; a projection and its opposite view are
    mirror images, and in-plane angles are searched separately)."""
    from ackmeans_torch.ops.projection import project
    from ackmeans_torch.ops.rotations import direction_to_rot_tilt, euler_to_matrix
    from ackmeans_torch.sim.views import half_sphere_points

    check_int("n_views", n_views, 1)
    rot_tilt = direction_to_rot_tilt(half_sphere_points(n_views))
    angles = torch.cat([rot_tilt, rot_tilt.new_zeros(n_views, 1)], 1)
    return project(volume, euler_to_matrix(angles).to(volume.dtype))


class TemplatePicker(Picker):
    """NCC template picker (module docstring).

    templates: ``(T, L, L)`` images of positive density (class averages; projections from
    :func:`projection_templates`). template_pixel_size: Å/px of the templates; None: the
    micrograph's. angle_step: degrees of the in-plane grid. apply_ctf: multiply templates by the
    micrograph's CTF when it is given. batch: templates correlated at once (memory). Other
    keywords: :class:`~ackmeans_torch.pickers.base.Picker`."""

    def __init__(self, *, templates: torch.Tensor, template_pixel_size: float | None = None,
                 angle_step: float = 15.0, apply_ctf: bool = True, batch: int = 32, **kwargs) -> None:
        super().__init__(**kwargs)
        templates = torch.as_tensor(templates, dtype=torch.float32)
        if templates.ndim != 3 or templates.shape[1] != templates.shape[2] or len(templates) == 0:
            raise InputError(f"templates must have shape (T, L, L) with T >= 1, got {tuple(templates.shape)}")
        check_number("angle_step", angle_step, 0.5, 360)
        if template_pixel_size is not None:
            check_number("template_pixel_size", template_pixel_size, 1e-3)
        check_int("batch", batch, 1)
        self.templates, self.template_pixel_size = templates, template_pixel_size
        self.angle_step, self.apply_ctf, self.batch = float(angle_step), apply_ctf, batch

    @classmethod
    def from_volume(cls, *, volume: str | torch.Tensor = "phantom", volume_pixel_size: float | None = None,
                    volume_box: int | None = None, n_views: int = 12, **kwargs) -> TemplatePicker:
        """Templates from ``n_views`` projections of a map: an MRC path, a tensor, or
        ``"phantom"`` (the built-in one, ``volume_box`` px, default the particle diameter /
        0.8, since the phantom fills 80% of its box)."""
        if isinstance(volume, str) and volume == "phantom":
            from ackmeans_torch.sim.volume import phantom

            box = volume_box or int(round(kwargs["particle_diameter"] / 0.8))
            vol = phantom(box)
        elif isinstance(volume, str):
            from ackmeans_torch.io.mrc import load_volume

            vol, volume_pixel_size = load_volume(volume, voxel_size=volume_pixel_size)
        else:
            vol = torch.as_tensor(volume, dtype=torch.float32)
        return cls(templates=projection_templates(vol, n_views), template_pixel_size=volume_pixel_size, **kwargs)

    @classmethod
    def from_averages(cls, *, path: str, **kwargs) -> TemplatePicker:
        """Templates from a stack of 2D class averages (MRC; its header pixel size unless
        ``template_pixel_size`` is given)."""
        from ackmeans_torch.io.mrc import open_stack

        stack = open_stack(path)
        kwargs.setdefault("template_pixel_size", stack.pixel_size or None)
        return cls(templates=torch.as_tensor(np.asarray(stack[np.arange(len(stack))])), **kwargs)

    def working_templates(self, *, pixel_size: float | None, ctf: Mapping | None) -> torch.Tensor:
        """``(T·A, S, S)`` templates on the working scale, turned, CTF-modulated, signed,
        zero-mean and unit-norm inside the mask (zero outside)."""
        size = self.templates.shape[-1]
        scale = 1.0 / self.bin
        if self.template_pixel_size is not None and pixel_size is not None:
            scale = self.template_pixel_size / (pixel_size * self.bin)
        small = max(3, int(round(size * scale)))
        if small > size:
            raise InputError(f"templates of {size} px at {self.template_pixel_size} Å/px are too coarse for the "
                             f"micrograph ({pixel_size} Å/px, bin {self.bin}); give finer templates")
        work = fourier_crop(self.templates, small)
        box = max(small, 2 * int(round(self.particle_diameter / self.bin)))
        lo = box // 2 - small // 2
        padded = work.new_zeros((len(work), box, box))
        padded[:, lo:lo + small, lo:lo + small] = work
        angles = torch.arange(0.0, 360.0, self.angle_step)
        turned = rotate_images(padded.repeat_interleave(len(angles), 0),
                               torch.deg2rad(angles).repeat(len(work)))
        if self.apply_ctf and ctf is not None and pixel_size is not None:
            missing = [k for k in CTF_KEYS if k not in ctf]
            if missing:
                raise InputError(f"micrograph CTF lacks {', '.join(missing)}; give all of {', '.join(CTF_KEYS)}")
            values = ctf_values(size=box, pixel_size=pixel_size * self.bin,
                                **{v: float(ctf[k]) for k, v in CTF_KEYWORDS.items()})
            turned = ifft2c(fft2c(turned) * values).real
        if self.contrast == "dark":
            turned = -turned
        axis = torch.arange(box) - box // 2
        mask = (axis[:, None] ** 2 + axis[None, :] ** 2) <= (box // 2) ** 2
        turned = torch.where(mask, turned, 0.0)
        turned = turned - (turned.sum((1, 2), keepdim=True) / mask.sum()) * mask
        return turned / turned.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]

    def _pick(self, image: torch.Tensor, *, pixel_size: float | None, ctf: Mapping | None) -> PickSet:
        return self.peaks(self.ncc_map(image, pixel_size=pixel_size, ctf=ctf))

    def ncc_map(self, image: torch.Tensor, *, pixel_size: float | None = None, ctf: Mapping | None = None) -> torch.Tensor:
        """``(h, w)`` best NCC over templates and angles at each pixel of the working
        copy ``image (h, w)`` (the template centre at that pixel)."""
        templates = self.working_templates(pixel_size=pixel_size, ctf=ctf).to(image.device)
        h, w = image.shape
        box = templates.shape[-1]
        if box > min(h, w):
            raise InputError(f"micrograph {tuple(image.shape)} (binned) is smaller than the template box {box}")
        axis = torch.arange(box, device=image.device) - box // 2
        mask = ((axis[:, None] ** 2 + axis[None, :] ** 2) <= (box // 2) ** 2).to(image.dtype)
        spec = torch.fft.rfft2(image)

        def correlate(kernels: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
            # Σ_m k(m) I(x + m) with the kernel's centre at x: correlation by FFT, then rolled
            # so that index x holds the window centred there
            padded = kernels.new_zeros((len(kernels), h, w))
            padded[:, :box, :box] = kernels
            out = torch.fft.irfft2(spectrum * torch.fft.rfft2(padded).conj(), s=(h, w))
            return torch.roll(out, (box // 2, box // 2), (-2, -1))

        n = mask.sum()
        s1 = correlate(mask[None], spec)[0]
        s2 = correlate(mask[None], torch.fft.rfft2(image**2))[0]
        local = (n * (s2 / n - (s1 / n) ** 2)).clamp_min(1e-6 * n).sqrt()
        best = torch.full_like(image, -math.inf)
        for i in range(0, len(templates), self.batch):
            best = torch.maximum(best, correlate(templates[i:i + self.batch], spec).amax(0))
        return best / local
