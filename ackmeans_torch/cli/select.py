"""Keep or drop 2D classes → a ``particles.star`` RELION reads (image names as the input gives
them), from one of our classify runs or a RELION Class2D job.

Examples::

    ackmeans-torch select input=runs/classify/a keep='[1,4,7]'
    ackmeans-torch select input=Class2D/job005/run_it025_model.star min_size=100 drop='[3]'
    ackmeans-torch select input=runs/classify/a classes_file=good_classes.txt

The command only composes its config into
:func:`ackmeans_torch.classify.select.select_classes`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ackmeans_torch.classify.select import select_classes, write_selection
from ackmeans_torch.cli.app import hydra_command

log = logging.getLogger(__name__)


def _numbers(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


@hydra_command("select")
def main(cfg: DictConfig, run_dir: Path) -> None:
    selection = select_classes(cfg.input, keep=_numbers(cfg.keep), drop=_numbers(cfg.drop),
                               min_size=cfg.min_size, classes_file=cfg.classes_file,
                               project_dir=cfg.project_dir)
    out = write_selection(selection, run_dir / cfg.output)
    log.info("kept %d of %d classes (%s), %d of %d particles from %s -> %s", len(selection.kept),
             len(selection.sizes), ",".join(map(str, selection.kept)), len(selection.table),
             int(selection.sizes.sum()), selection.source, out)
