"""Simulate micrographs with ground truth → ``Micrographs/*.mrc``, ``micrographs_ctf.star``, the
true particle boxes in every coordinate format the consensus reads (``truth/<format>/``) and the
junk (``junk/box/``), from ``micrographs/simulate.py``.

Examples::

    ackmeans-torch simulate-micrographs                                   # 8 x 1024² on the phantom
    ackmeans-torch simulate-micrographs sim.n_micrographs=40 sim.carbon_edge=2 seed=1
    ackmeans-torch simulate-micrographs sim.volume=../shared/data/volumes/ribosome70S_65px.mrc sim.pixel_size=5
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from ackmeans_torch.cli.app import hydra_command

log = logging.getLogger(__name__)


@hydra_command("simulate-micrographs")
def main(cfg: DictConfig, run_dir: Path) -> None:
    from ackmeans_torch.micrographs.simulate import simulate_micrographs, write_simulated

    spec = instantiate(cfg.sim)
    start = time.perf_counter()
    sim = simulate_micrographs(spec, seed=cfg.seed)
    elapsed = time.perf_counter() - start
    star = write_simulated(sim, run_dir)
    n = sum(len(t) for t in sim.truth.values())
    log.info("simulated %d micrographs of %d px, %d particles, %d junk in %.1f s -> %s", len(sim.images), spec.size,
             n, sum(len(j) for j in sim.junk.values()), elapsed, star)
    print(f"simulate-micrographs: {len(sim.images)} micrographs, {n} particles -> {star}")


if __name__ == "__main__":
    main()
