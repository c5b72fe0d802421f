"""CNN picker: a small fully convolutional network giving a particle-probability map, trained
with the Lightning ``Trainer`` from positive labels only, by the non-negative positive-unlabelled
risk (nnPU; Kiryo et al. 2017), the objective Topaz offers besides GE-binomial.

Consensus (or a user) labels some particles and says nothing about the rest of the micrograph,
so pixels are *labelled positive* (within ``label_radius`` px of a labelled centre on the binned
working copy, ``base.py``) or *unlabelled* (everything, a sample of the marginal). With the
logistic loss ℓ(z, y) = softplus(−y·z), class prior π (the expected fraction of positive pixels)
and the means R over the two sets,

    R(f) = π·R_P(f, +1) + max(0, R_U(f, −1) − π·R_P(f, −1)),

an unbiased risk of the positive/negative problem whose negative part is kept ≥ 0 (the "nn":
without it a flexible net drives it below zero and overfits). π comes from
``expected_particles`` per micrograph (default: the mean number labelled, scaled by
``prior_scale``, since consensus labels miss some particles).

Network (:class:`PickerNet`): 3 convolutions (7x7, then 5x5 dilated 2 and 4, ``channels`` wide, batch
norm, leaky ReLU, reflected edges;
receptive field 31 px ≈ twice the working particle diameter) and a 1x1 convolution to one logit
per pixel. Training sees random ``crop`` x ``crop`` windows; picking runs the whole working
micrograph at once and reduces the logit map to picks by non-maximum suppression (score = logit).
Devices: ``accelerator``/``devices``/``strategy`` go to the Trainer (``ddp`` for several GPUs);
the network is moved back to CPU after training, so picking runs where ``pick_device`` says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.io.coords import PickSet
from ackmeans_torch.pickers.base import TrainablePicker, label_map, working_image


class PickerNet(nn.Module):
    """``(B, 1, h, w)`` working images -> ``(B, 1, h, w)`` particle logits (same size)."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        # batch norm and leaky units: with plain ReLUs a few large first steps can leave every
        # unit dead and the map constant (seen on this data)
        self.layers = nn.Sequential(
            nn.Conv2d(1, channels, 7, padding=3, padding_mode="reflect"), nn.BatchNorm2d(channels), nn.LeakyReLU(0.1),
            nn.Conv2d(channels, channels, 5, padding=4, dilation=2, padding_mode="reflect"), nn.BatchNorm2d(channels),
            nn.LeakyReLU(0.1),
            nn.Conv2d(channels, channels, 5, padding=8, dilation=4, padding_mode="reflect"), nn.BatchNorm2d(channels),
            nn.LeakyReLU(0.1),
            nn.Conv2d(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def nnpu_loss(logits: torch.Tensor, labels: torch.Tensor, prior: float) -> torch.Tensor:
    """Non-negative PU risk (module docstring) of ``logits`` with 0/1 ``labels`` (1 = labelled
    positive) of the same shape and class ``prior`` in (0, 1)."""
    pos = labels > 0.5
    n_pos = pos.sum().clamp_min(1)
    r_p_pos = (F.softplus(-logits) * pos).sum() / n_pos
    r_p_neg = (F.softplus(logits) * pos).sum() / n_pos
    r_u_neg = F.softplus(logits).mean()
    return prior * r_p_pos + torch.clamp(r_u_neg - prior * r_p_neg, min=0.0)


def _module_class():
    """The LightningModule, defined on first use: the picker module imports without Lightning."""
    import lightning.pytorch as pl

    class PUModule(pl.LightningModule):
        """Trains a :class:`PickerNet` with :func:`nnpu_loss`; logs ``train_loss``/``val_loss``."""

        def __init__(self, net: PickerNet, prior: float, lr: float) -> None:
            super().__init__()
            self.net, self.prior, self.lr = net, prior, lr
            self.losses: dict[str, list[float]] = {"train": [], "val": []}

        def _loss(self, batch) -> torch.Tensor:
            images, labels = batch
            return nnpu_loss(self.net(images), labels, self.prior)

        def training_step(self, batch, batch_idx):
            loss = self._loss(batch)
            self.log("train_loss", loss, on_epoch=True, on_step=False, sync_dist=True)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self._loss(batch), on_epoch=True, sync_dist=True)

        def on_train_epoch_end(self) -> None:
            self.losses["train"].append(float(self.trainer.callback_metrics["train_loss"]))

        def on_validation_epoch_end(self) -> None:
            if "val_loss" in self.trainer.callback_metrics and not self.trainer.sanity_checking:
                self.losses["val"].append(float(self.trainer.callback_metrics["val_loss"]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.net.parameters(), lr=self.lr)

    return PUModule


class CropDataset(torch.utils.data.Dataset):
    """``n`` random ``crop``-px windows of working images with their label maps; the windows
    are drawn once from ``seed`` (same seed → same data)."""

    def __init__(self, images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], *, n: int, crop: int,
                 seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.images, self.labels, self.crop = images, labels, crop
        which = rng.integers(0, len(images), n)
        self.windows = [(int(i), int(rng.integers(0, images[i].shape[0] - crop + 1)),
                         int(rng.integers(0, images[i].shape[1] - crop + 1))) for i in which]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int):
        i, y, x = self.windows[index]
        c = self.crop
        return self.images[i][None, y:y + c, x:x + c], self.labels[i][None, y:y + c, x:x + c]


class CNNPicker(TrainablePicker):
    """PU-trained fully convolutional picker (module docstring).

    label_radius: px on the input micrograph around a labelled centre counted positive (default
    0.2 x particle diameter). expected_particles: per micrograph, for the class prior (None: the
    mean labelled x ``prior_scale``). epochs, crops_per_epoch, crop (working px), batch_size, lr:
    training. accelerator, devices, strategy: the Lightning Trainer's. seed: crops and weights.
    weights: a state-dict file of a trained :class:`PickerNet` to start from. threshold: lowest
    logit kept; None: after each fit, the one that best reproduces the validation labels
    (:meth:`best_threshold`). Other keywords:
    :class:`~ackmeans_torch.pickers.base.Picker`."""

    def __init__(self, *, label_radius: float | None = None, expected_particles: float | None = None,
                 prior_scale: float = 1.1, epochs: int = 8, crops_per_epoch: int = 256, crop: int = 64,
                 batch_size: int = 16, lr: float = 1e-3, channels: int = 16, accelerator: str = "cpu",
                 devices: int | str = 1, strategy: str = "auto", pick_device: str = "cpu", seed: int = 0,
                 weights: str | None = None, threshold: float | None = None, **kwargs) -> None:
        super().__init__(threshold=-math.inf if threshold is None else threshold, **kwargs)
        self.calibrate = threshold is None
        for name, value in (("epochs", epochs), ("crops_per_epoch", crops_per_epoch), ("crop", crop),
                            ("batch_size", batch_size), ("channels", channels)):
            check_int(name, value, 1)
        check_number("lr", lr, 1e-8, 1.0)
        check_number("prior_scale", prior_scale, 1e-3, 100)
        if expected_particles is not None:
            check_number("expected_particles", expected_particles, 1e-3)
        self.label_radius = float(label_radius) if label_radius is not None else 0.2 * self.particle_diameter
        check_number("label_radius", self.label_radius, 1e-3)
        self.expected_particles, self.prior_scale = expected_particles, prior_scale
        self.epochs, self.crops_per_epoch, self.crop = epochs, crops_per_epoch, crop
        self.batch_size, self.lr, self.seed = batch_size, lr, seed
        self.trainer_options = {"accelerator": accelerator, "devices": devices, "strategy": strategy}
        self.pick_device = pick_device
        torch.manual_seed(seed)
        self.net = PickerNet(channels)
        self.trained = weights is not None
        if weights is not None:
            self.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        # every fit starts from these weights (REPIC trains ab initio each round), so a fit
        # depends only on its labels and seed
        self._initial = {k: v.clone() for k, v in self.net.state_dict().items()}
        self.losses_: dict[str, list[float]] = {"train": [], "val": []}

    def _prepared(self, micrographs: Sequence, boxes: Sequence[PickSet], what: str):
        if len(micrographs) != len(boxes):
            raise InputError(f"{what}: {len(micrographs)} micrographs but {len(boxes)} box sets; give one per micrograph")
        if not micrographs:
            raise InputError(f"{what}: no micrographs to train on")
        images = [working_image(m, self.bin) for m in micrographs]
        for img in images:
            if min(img.shape) < self.crop:
                raise InputError(f"{what}: a binned micrograph {tuple(img.shape)} is smaller than crop={self.crop}; "
                                 "lower crop")
        r = self.label_radius / self.bin
        labels = [label_map(tuple(img.shape), (b.centres + 0.5) / self.bin - 0.5, r) for img, b in zip(images, boxes)]
        return images, labels

    def class_prior(self, images: Sequence[torch.Tensor], boxes: Sequence[PickSet]) -> float:
        """Expected fraction of positive pixels on the working micrographs."""
        per = self.expected_particles if self.expected_particles is not None else \
            self.prior_scale * float(np.mean([len(b) for b in boxes]))
        disc = math.pi * max(self.label_radius / self.bin, 0.5) ** 2
        area = float(np.mean([img.numel() for img in images]))
        return float(min(max(per * disc / area, 1e-4), 0.5))

    def fit(self, micrographs: Sequence, boxes: Sequence[PickSet], *,
            val: tuple[Sequence, Sequence[PickSet]] | None = None) -> CNNPicker:
        import lightning.pytorch as pl

        images, labels = self._prepared(micrographs, boxes, "training set")
        if sum(len(b) for b in boxes) == 0:
            raise InputError("training set: no labelled particles; the CNN picker needs positives to learn from")
        prior = self.class_prior(images, boxes)
        self.net.load_state_dict(self._initial)
        self.net.train()  # picking left it in eval mode; batch norm must use batch statistics here
        torch.manual_seed(self.seed)
        train = torch.utils.data.DataLoader(CropDataset(images, labels, n=self.crops_per_epoch, crop=self.crop,
                                                        seed=self.seed), batch_size=self.batch_size, shuffle=True,
                                            generator=torch.Generator().manual_seed(self.seed))
        val_loader = None
        if val is not None and len(val[0]):
            vi, vl = self._prepared(*val, "validation set")
            val_loader = torch.utils.data.DataLoader(
                CropDataset(vi, vl, n=max(self.batch_size, self.crops_per_epoch // 4), crop=self.crop,
                            seed=self.seed + 1), batch_size=self.batch_size)
        module = _module_class()(self.net, prior, self.lr)
        trainer = pl.Trainer(max_epochs=self.epochs, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, **self.trainer_options)
        trainer.fit(module, train, val_loader)
        self.net = module.net.cpu().eval()
        self.losses_ = module.losses
        self.prior_ = prior
        self.trained = True
        if self.calibrate:
            held = (vi, val[1]) if val_loader is not None else (images, boxes)
            self.threshold = self.best_threshold(*held)
        return self

    def best_threshold(self, images: Sequence[torch.Tensor], boxes: Sequence[PickSet]) -> float:
        """The logit threshold that keeps, on the held-out working ``images``, as many picks
        as the class prior expects (``expected_particles``, else ``prior_scale`` x the mean
        labelled in ``boxes``) per micrograph. PU logits are not calibrated probabilities, so 0
        is no threshold, but the net ranks well; the prior is the one count the PU objective
        already assumes (a cut fitted to the labels themselves would shrink towards them, since
        every unlabelled particle found counts against it)."""
        saved, self.threshold = self.threshold, -math.inf
        try:
            scores = np.sort(np.concatenate([self.peaks(self.logits(img)).scores for img in images]))[::-1]
        finally:
            self.threshold = saved
        per = self.expected_particles if self.expected_particles is not None else \
            self.prior_scale * float(np.mean([len(b) for b in boxes]))
        keep = int(round(per * len(images)))
        if not len(scores) or keep < 1:
            return saved
        return float(scores[min(keep, len(scores)) - 1])

    def save(self, path) -> None:
        """Write the network's state dict (``weights=`` reads it back)."""
        from ackmeans_torch.io.atomic import atomic_output

        with atomic_output(path) as tmp:
            torch.save(self.net.state_dict(), tmp)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """``(h, w)`` particle logits of a working image."""
        device = torch.device(self.pick_device)
        with torch.no_grad():
            return self.net.to(device).eval()(image.to(device)[None, None])[0, 0].cpu()

    def _pick(self, image: torch.Tensor, *, pixel_size: float | None, ctf: Mapping | None) -> PickSet:
        if not self.trained:
            raise InputError("the CNN picker is untrained; fit it on labelled micrographs or give weights=<file>")
        return self.peaks(self.logits(image))

