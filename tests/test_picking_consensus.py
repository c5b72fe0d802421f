"""The consensus pipeline: recovery on synthetic picks, m-of-k, REPIC 0.2.1 rules reproduced (a
direct re-statement of its rules with networkx and brute force), robustness cases, real data."""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.coords import PickSet, write_box
from ackmeans_torch.picking.consensus import PickerData, load_pickers, run_consensus

NAMES = ["a", "b", "c"]


def _synthetic(seed: int, n_true: int = 40, n_false: int = 15, jitter: float = 6.0, box: float = 100.0):
    """True particles on a grid (spacing 2 boxes) picked by 3 pickers with jitter, plus false picks
    of each picker alone: a row per picker, 2 boxes apart, far from particles and other rows."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(8), np.arange(8)), -1).reshape(-1, 2)[:n_true] * 2 * box + box
    picks = {}
    for p, name in enumerate(NAMES):
        false = np.stack([box * 20 + 2 * box * np.arange(n_false), np.full(n_false, box * (1 + 4 * p))], 1)
        xy = np.concatenate([grid + rng.normal(0, jitter, grid.shape), false])
        picks[name] = PickSet(xy, np.full(len(xy), box), rng.uniform(0.5, 1.0, len(xy)))
    return grid, picks


def test_recovers_true_particles_and_drops_single_picker_boxes() -> None:
    """Recovery: 3 pickers with 6 px jitter on 40 particles and 15 lone false picks each → exactly
    the 40 particles, each within 15 px of its true centre."""
    grid, picks = _synthetic(0)
    data = PickerData(NAMES, {"m": picks})
    (res,) = run_consensus(data)
    assert len(res.picks) == 40 and res.status == "optimal"
    d = np.linalg.norm(res.picks.centres[:, None] - grid[None], axis=2).min(1)
    assert d.max() < 15


def test_min_pickers_keeps_particles_one_picker_missed() -> None:
    """m-of-k: remove 10 true particles from picker c; 3-of-3 keeps 30, 2-of-3 keeps all 40, of
    which exactly the 30 that all three found are reported as 3-picker particles (no full clique is
    split into a pair), and 2-picker confidences are at most 2/3."""
    grid, picks = _synthetic(1)
    c = picks["c"]
    keep = np.r_[np.arange(10, len(c))]
    picks["c"] = PickSet(c.centres[keep], c.box_size[keep], c.scores[keep])
    data = PickerData(NAMES, {"m": picks})
    (full,) = run_consensus(data)
    (two,) = run_consensus(data, min_pickers=2)
    assert len(full.picks) == 30 and len(two.picks) == 40
    assert sorted(np.bincount(two.n_pickers).tolist()[2:]) == [10, 30]
    assert two.picks.scores[two.n_pickers == 2].max() <= 2 / 3 + 1e-12


def _repic_reference(picks: dict[str, PickSet], box: float) -> tuple[float, list[float]]:
    """REPIC 0.2.1's rules restated: corner JI with one box size and strict > 0.3, sigmoid per file
    when any score is outside [0, 1], networkx maximal cliques of size k, weight
    float32(median score × median JI), brute-force optimum. Returns objective, sorted confidences."""
    G = nx.Graph()
    nodes = []
    for p, name in enumerate(NAMES):
        s = picks[name].scores
        s = 1 / (1 + np.exp(-s)) if (s.min() < 0 or s.max() > 1) else s
        for i, (x, y) in enumerate(picks[name].corners):
            nodes.append((p, i, x, y, s[i]))
    for u, v in itertools.combinations(nodes, 2):
        if u[0] == v[0]:
            continue
        ox = max(min(u[2], v[2]) + box - max(u[2], v[2]), 0)
        oy = max(min(u[3], v[3]) + box - max(u[3], v[3]), 0)
        ji = ox * oy / (2 * box**2 - ox * oy)
        if ji > 0.3:
            G.add_edge(u[:2], v[:2], weight=ji)
            G.nodes[u[:2]]["s"], G.nodes[v[:2]]["s"] = u[4], v[4]
    cliques = [c for c in nx.find_cliques(G) if len(c) == 3]
    w, conf = [], []
    for c in cliques:
        sub = G.subgraph(c)
        conf.append(statistics.median(sub.nodes[n]["s"] for n in c))
        w.append(float(np.float32(conf[-1] * statistics.median(d["weight"] for *_, d in sub.edges(data=True)))))
    best, best_conf = 0.0, []
    comps = list(nx.connected_components(nx.Graph([(i, j) for i, j in itertools.combinations(range(len(cliques)), 2)
                                                   if set(cliques[i]) & set(cliques[j])])))
    lone = set(range(len(cliques))) - set().union(*comps) if comps else set(range(len(cliques)))
    best += sum(w[i] for i in lone)
    best_conf += [conf[i] for i in lone]
    for comp in comps:
        comp = sorted(comp)
        top, top_conf = 0.0, []
        for mask in itertools.product([0, 1], repeat=len(comp)):
            chosen = [comp[i] for i in range(len(comp)) if mask[i]]
            used = [n for j in chosen for n in cliques[j]]
            if len(used) == len(set(used)) and sum(w[j] for j in chosen) > top:
                top, top_conf = sum(w[j] for j in chosen), [conf[j] for j in chosen]
        best += top
        best_conf += top_conf
    return best, sorted(best_conf)


def test_repic_compat_reproduces_repic_rules() -> None:
    """REPIC compat: on dense synthetic picks (10 px jitter, extra near-duplicates, Topaz-like
    log-likelihood scores for picker c) the objective and the selected confidences equal a direct
    re-statement of REPIC 0.2.1's rules solved by brute force."""
    rng = np.random.default_rng(3)
    _, picks = _synthetic(3, n_true=12, n_false=5, jitter=10.0)
    for name in NAMES:  # near-duplicate boxes make conflicting cliques
        p = picks[name]
        dup = p.centres[:6] + rng.normal(0, 25, (6, 2))
        sc = np.r_[p.scores, rng.uniform(0.3, 1, 6)]
        if name == "c":
            sc = rng.normal(0, 3, len(sc))
        picks[name] = PickSet(np.round(np.r_[p.centres, dup]), np.full(len(sc), 100.0), sc)
    (res,) = run_consensus(PickerData(NAMES, {"m": picks}), repic_compat=True, box_size=100)
    objective, confidences = _repic_reference(picks, 100.0)
    assert res.objective == pytest.approx(objective, rel=1e-6)
    assert sorted(res.picks.scores.tolist()) == pytest.approx(confidences)
    assert len(confidences) >= 12


def test_robust_micrographs(tmp_path: Path) -> None:
    """Robustness: no overlaps, overlaps all below the threshold, a picker without a file, an empty
    file, and an unreadable file in one micrograph: none aborts; the bad one is reported and
    skipped, the rest processed."""
    dirs = {n: tmp_path / n for n in NAMES}
    for d in dirs.values():
        d.mkdir()
    one = PickSet(np.array([[500.0, 500.0]]), np.array([100.0]), np.array([0.9]))
    far = {n: PickSet(np.array([[100.0 + 1000 * i, 100.0]]), np.array([100.0]), np.array([0.9]))
           for i, n in enumerate(NAMES)}
    low = {n: PickSet(np.array([[500.0 + 60 * i, 500.0]]), np.array([100.0]), np.array([0.9]))
           for i, n in enumerate(NAMES)}  # neighbours overlap with JI 40/160 = 0.25 < 0.3
    for n in NAMES:
        write_box(dirs[n] / "ok.box", one)
        write_box(dirs[n] / "far.box", far[n])
        write_box(dirs[n] / "low.box", low[n])
        if n != "c":
            write_box(dirs[n] / "missing.box", one)
        (dirs[n] / "empty.box").write_text("" if n == "a" else "450 450 100 100 0.8\n")
        (dirs[n] / "bad.box").write_text("450 450 100 100 0.8\n" if n != "b" else "450 4x0 100 100 0.8\n")
    data = load_pickers({n: dirs[n] for n in NAMES})
    res = {r.stem: r for r in run_consensus(data)}
    assert len(res["ok"].picks) == 1
    assert res["far"].status == res["low"].status == "no cliques" and len(res["low"].picks) == 0
    assert len(res["missing"].picks) == 0 and res["missing"].n_boxes["c"] is None
    assert len(res["empty"].picks) == 0
    assert res["bad"].status == "skipped" and "bad.box:1: y '4x0' is not a number" in res["bad"].error
    res2 = {r.stem: r for r in run_consensus(data, min_pickers=2)}
    assert len(res2["missing"].picks) == 1 and len(res2["empty"].picks) == 1
    with pytest.raises(InputError, match="bad.box:1"):
        load_pickers({n: dirs[n] for n in NAMES}, skip_bad=False)


def test_bad_parameters() -> None:
    """Bad input: one picker; repic_compat without box_size; unknown options."""
    _, picks = _synthetic(4, n_true=2, n_false=0)
    data = PickerData(NAMES, {"m": picks})
    with pytest.raises(InputError, match="needs box_size"):
        run_consensus(data, repic_compat=True)
    with pytest.raises(InputError, match="score_norm='z' is unknown"):
        run_consensus(data, score_norm="z")
    with pytest.raises(InputError, match="consensus_box='x' is unknown"):
        run_consensus(data, consensus_box="x")
    with pytest.raises(InputError, match="at least 2 pickers"):
        load_pickers({"a": "."})


def test_empiar10017_consensus_counts(shared_data: Path) -> None:
    """Real data: REPIC compat on the 12 EMPIAR-10017 micrographs gives 242 consensus particles on
    Falcon_2012_06_12-14_33_35_0 (REPIC 0.2.1 run on the same files: 242) and all ILPs optimal."""
    d = shared_data / "picking" / "empiar10017"
    data = load_pickers({n: d / n for n in ("crYOLO", "deepPicker", "topaz")})
    res = run_consensus(data, repic_compat=True, box_size=180)
    assert len(res) == 12 and all(r.status == "optimal" for r in res)
    first = next(r for r in res if r.stem == "Falcon_2012_06_12-14_33_35_0")
    assert len(first.picks) == 242 and first.n_cliques == 351


@pytest.mark.gpu
def test_cuda_gives_the_cpu_result() -> None:
    """Device-agnostic: graph and cliques on CUDA select the same particles as on CPU."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _, picks = _synthetic(5)
    data = PickerData(NAMES, {"m": picks})
    (cpu,) = run_consensus(data, min_pickers=2)
    (gpu,) = run_consensus(data, min_pickers=2, device="cuda")
    np.testing.assert_allclose(gpu.picks.centres, cpu.picks.centres)
    assert gpu.objective == pytest.approx(cpu.objective)
