"""The files of the trust commands (trust/outputs.py) on hand-made results: the stable and
unstable STARs partition the particles with the right class numbers and image names RELION's
reader resolves, the model STAR carries the per-class figures, the split's particles.star gives
each particle its leaf."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.data.source import ArraySource
from ackmeans_torch.io.star import read_particles, read_star
from ackmeans_torch.trust.outputs import write_reproducibility, write_split
from ackmeans_torch.trust.reproduce import match_runs
from ackmeans_torch.trust.split import SplitTree


def _source(n: int) -> ArraySource:
    table = pd.DataFrame({"rlnImagePixelSize": 2.0, "rlnImageSize": 8, "rlnOpticsGroup": 1,
                          "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
                          "rlnAmplitudeContrast": 0.1}, index=range(n))
    return ArraySource(torch.randn(n, 8, 8, generator=torch.Generator().manual_seed(0)), table,
                       pixel_size=2.0)


def test_reproducibility_files(tmp_path):
    """Particles 0 and 1 move in the second run: they alone are in the unstable STAR, with their
    reference-run class; the others are stable with their matched class; the images are written
    once and named from the run directory; model.star has one row per class with the figures."""
    first = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    second = first.copy()
    second[[0, 1]] = 1
    result = match_runs(np.stack([first, first, second]), 2)
    paths = write_reproducibility(tmp_path, result, _source(8), project_dir=tmp_path)
    stable = read_particles(paths["particles_stable.star"])
    unstable = read_particles(paths["particles_unstable.star"])
    assert len(stable) == 6 and len(unstable) == 2
    reference = result.labels[result.reference]
    assert list(unstable.particles["rlnClassNumber"]) == list(reference[[0, 1]] + 1)
    assert list(stable.particles["rlnClassNumber"]) == list(reference[2:] + 1)
    assert stable.particles["rlnImageName"][0] == "000003@images.mrcs"
    assert (tmp_path / "images.mrcs").is_file()
    model = read_star(paths["model.star"])["model_classes"]
    assert list(model["rlnClassNumber"]) == [1, 2]
    assert np.allclose(model["ackStability"], result.classes["stability"], atol=1e-6)
    assert paths["class_sizes_runs.png"].stat().st_size > 0


def test_split_files(tmp_path):
    """A tree of one accepted split and two leaves: particles.star numbers each particle by its
    leaf, leaves.tsv counts them, tree.tsv has every decision, tree.png is drawn."""
    nodes = pd.DataFrame([
        {"node": "1", "parent": None, "depth": 0, "n": 6, "decision": "split", "p_value": 0.005},
        {"node": "1.1", "parent": "1", "depth": 1, "n": 2, "decision": "leaf", "p_value": np.nan},
        {"node": "1.2", "parent": "1", "depth": 1, "n": 4, "decision": "leaf", "p_value": np.nan},
    ])
    labels = np.array([1, 0, 1, 1, 0, 1])
    tree = SplitTree(nodes=nodes, labels=labels, leaves=["1.1", "1.2"])
    paths = write_split(tmp_path, tree, _source(6), project_dir=tmp_path)
    particles = read_particles(paths["particles.star"]).particles
    assert list(particles["rlnClassNumber"]) == list(labels + 1)
    leaves = pd.read_csv(paths["leaves.tsv"], sep="\t", dtype={"node": str})
    assert list(leaves["size"]) == [2, 4] and list(leaves["node"]) == ["1.1", "1.2"]
    assert len(pd.read_csv(paths["tree.tsv"], sep="\t")) == 3
    assert paths["tree.png"].stat().st_size > 0
