"""The classification figures: the gallery sorted by size and labelled with class number and
size under the run's title; integer ticks on the class-size plot."""

from __future__ import annotations

import numpy as np
import pytest

from ackmeans_torch.eval import plots


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions make, kept open (and still written) for inspection."""
    made = []

    def keep(fig, path):
        made.append(fig)
        fig.savefig(path)
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    yield made
    for fig in made:
        plots.plt.close(fig)


def test_gallery_is_largest_first_with_class_number_and_size(figures, tmp_path):
    sizes = np.array([3, 10, 0, 10, 1])
    averages = np.random.default_rng(0).normal(size=(5, 8, 8))
    path = plots.class_gallery(averages, sizes, tmp_path / "g.png", ncols=3,
                               title="MRA / ACK-means, β = 0.5")
    assert path.is_file()
    fig = figures[0]
    labels = [[t.get_text() for t in ax.texts] for ax in fig.axes if ax.texts]
    # ties keep class order; the empty class comes last
    assert labels == [["#2", "10"], ["#4", "10"], ["#1", "3"], ["#5", "1"], ["#3", "0"]]
    assert fig._suptitle.get_text() == "MRA / ACK-means, β = 0.5"
    assert list(plots.gallery_order(sizes)) == [1, 3, 0, 4, 2]


def test_class_sizes_plot_has_integer_ticks(figures, tmp_path):
    plots.ranked_sizes({"MRA / K-means": np.array([1, 2, 2, 3])}, tmp_path / "s.png")
    ax = figures[0].axes[0]
    for ticks in (ax.get_xticks(), ax.get_yticks()):
        assert len(ticks) and np.allclose(ticks, np.round(ticks))
