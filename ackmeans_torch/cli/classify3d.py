"""3D classification of particles with known poses: K class maps by ACK-means (or K-means,
SPIDER, EQK-means, any size penalty), hard or soft, with RELION-shaped outputs.

Examples::

    ackmeans-torch classify3d                                        # built-in hetero3d set
    ackmeans-torch classify3d data=file data.path=Refine3D/job020/run_data.star n_classes=4 \\
        class3d.resolution=8 sigma0=0.00001 max_iter=50             # 0.001 % changing
    ackmeans-torch classify3d objective=kmeans temperature=0.1       # soft EM, no size prior
    ackmeans-torch classify3d class3d.init=reference 'class3d.maps=[consensus.mrc]'

The command only composes the config into the arguments of
:func:`ackmeans_torch.class3d.run.run_class3d` (every option object made and validated before
any particle is read) and prints the summary.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from ackmeans_torch.class3d.run import run_class3d
from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.cli.classify import aligned_rows, classify_options

log = logging.getLogger(__name__)

#: the option objects of a 3D run and the config group each is made from
CLASS3D_GROUPS = (("rule", "objective"), ("trainer", "trainer"), ("class3d", "class3d"))


def summary_table(run) -> str:
    """The end-of-run summary of a :class:`~ackmeans_torch.class3d.run.Class3DRun` as rows."""
    s = run.summary
    rows = [("method", s["label"]),
            ("particles / classes", f"{s['n_images']:,} / {s['n_classes']}"),
            ("class sizes", ", ".join(f"{n:,}" for n in s["sizes"])),
            ("resolution (FSC 0.143)", ", ".join(f"{r:.1f} Å" for r in s["resolution"])),
            ("rounds", f"{s['iterations']}, " + (
                f"converged ({100 * s['changing']:.3g}% changing class)" if s["converged"]
                else f"stopped ({s['stopped']}) with {100 * s['changing']:.3g}% changing class")),
            ("time", f"{s['seconds']:.1f} s on {s['processes']} process(es)")]
    if "accuracy" in s:
        rows.append(("accuracy (known states)", f"{100 * s['accuracy']:.1f}% correctly assigned, "
                                                 f"ARI {s['ari']:.3f}"))
    if run.out_dir is not None:
        rows.append(("outputs", f"{run.out_dir}/ (run_class001.mrc..., run_data.star, "
                                "run_model.star, fsc.png, class_gallery.png)"))
    return aligned_rows(rows)


@hydra_command("classify3d", relaunchable=True)
def main(cfg: DictConfig, run_dir: Path) -> None:
    made = classify_options(cfg, groups=CLASS3D_GROUPS)
    resume = cfg.resume if isinstance(cfg.resume, bool) or cfg.resume is None else str(cfg.resume)
    source = instantiate(cfg.data)
    run = run_class3d(source, **made, out_dir=run_dir, resume=resume, progress=cfg.progress,
                      project_dir=cfg.data.get("project_dir"))
    if run is not None:
        log.info("summary\n%s", summary_table(run))
