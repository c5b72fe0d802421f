"""Benchmark one-shot consensus picking against REPIC 0.2.1, side by side, on synthetic pick sets.

Cases (box 180 px, 3 pickers, each picks a particle with probability 0.9 and 8 px jitter, plus 15 %
lone false picks; scores: two pickers in [0, 1], one Topaz-like log-likelihood):

* ``many``:  1,000 micrographs of 4096² px × ~300 boxes per picker;
* ``large``: 10 micrographs × ~10,000 boxes per picker (the same particle density, so the
  micrograph side grows to ~23,600 px: a montage-sized field).

For each case: ackmeans_torch ``run_consensus`` (default settings and ``repic_compat``) wall time and
per-micrograph time, file reading timed apart; with ``--repic DIR`` (a directory holding REPIC's
``repic`` package, e.g. a snapshot of github.com/ccameron/REPIC unpacked under /tmp — never in
this repository) REPIC's ``get_cliques`` + ``run_ilp`` on the same files (on the first
``--repic-mics`` micrographs; per-micrograph time extrapolated), and a check that the compat output
equals REPIC's: same particle count and confidences per micrograph, same coordinates except where
REPIC's representative is a tie in summed JI (its tie order is Python set order).

    python scripts/bench_consensus.py --repic /tmp/repic --device cpu
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ackmeans_torch.io.coords import PickSet, read_box, write_box
from ackmeans_torch.picking.consensus import load_pickers, run_consensus

PICKERS = ("cryolo", "deep", "topaz")
BOX = 180.0


def synthesise(folder: Path, n_mics: int, per_picker: int, seed: int) -> None:
    """Write BOX files ``folder/<picker>/mic_<iiiii>.box``, zero-padded: REPIC 0.2.1 pairs files by
    substring (``*mic_2*``) and stops with "multiple BOX files found" when one name is a prefix of
    another (mic_2, mic_20)."""
    rng = np.random.default_rng(seed)
    side = 4096.0 * np.sqrt(per_picker / 300.0)
    n_true = int(per_picker / (0.9 * 1.15))
    for i in range(n_mics):
        true = rng.uniform(BOX, side - BOX, (n_true, 2))
        for name in PICKERS:
            found = true[rng.random(n_true) < 0.9]
            found = found + rng.normal(0, 8, found.shape)
            false = rng.uniform(BOX, side - BOX, (int(0.15 * len(found)), 2))
            xy = np.round(np.concatenate([found, false]))
            score = rng.normal(1, 2, len(xy)) if name == "topaz" else rng.uniform(0.3, 1, len(xy))
            write_box(folder / name / f"mic_{i:05d}.box", PickSet(xy, np.full(len(xy), BOX), score))


def data_of(folder: Path):
    return load_pickers({n: folder / n for n in PICKERS})


def time_ours(folder: Path, device: str, **kw) -> tuple[float, float, list]:
    t0 = time.perf_counter()
    data = load_pickers({n: folder / n for n in PICKERS})
    t1 = time.perf_counter()
    res = run_consensus(data, device=device, **kw)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return t1 - t0, time.perf_counter() - t1, res


def time_repic(repic: Path, folder: Path, n_mics: int, work: Path) -> tuple[float, float, Path]:
    """REPIC get_cliques + run_ilp on the first n_mics micrographs (symlinked into ``work``):
    wall time of the two commands, and the sum of REPIC's own per-micrograph timings
    (``*_runtime.tsv``: graph + cliques, then ILP; no interpreter start or file writing)."""
    sub = work / "in"
    for name in PICKERS:
        (sub / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_mics):
            os.symlink(folder / name / f"mic_{i:05d}.box", sub / name / f"mic_{i:05d}.box")
    out = work / "out"
    env = {**os.environ, "PYTHONPATH": str(repic)}
    t0 = time.perf_counter()
    for cmd in (["get_cliques", str(sub), str(out), "180"], ["run_ilp", str(out), "180"]):
        r = subprocess.run([sys.executable, "-m", f"repic.commands.{cmd[0]}", *cmd[1:]], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"REPIC {cmd[0]} failed: {r.stderr.strip().splitlines()[-1]}")
    wall = time.perf_counter() - t0
    own = 0.0
    for f in out.glob("*_runtime.tsv"):
        values = f.read_text().split()
        own += float(values[0]) + (float(values[3]) if len(values) > 3 else 0.0)
    return wall, own, out


def compare(res: list, data, repic_out: Path, stems: list[str]) -> tuple[int, int, int]:
    """(micrographs identical, particles whose box differs only by a representative tie, other
    differences). A tie: REPIC's box is another member of the same clique whose summed JI to the
    other members equals the maximum (REPIC breaks it by Python set order, we by picker order)."""
    same = ties = other = 0
    by = {r.stem: r for r in res}
    for stem in stems:
        path = repic_out / f"{stem}.box"
        theirs = read_box(path) if path.exists() and path.stat().st_size else PickSet.empty()
        r = by[stem]
        mine = r.picks
        if len(theirs) != len(mine) or not np.allclose(np.sort(theirs.scores), np.sort(mine.scores), atol=1e-5):
            other += 1
            continue
        a = set(map(tuple, np.round(theirs.corners).astype(int).tolist()))
        differs = [i for i, c in enumerate(np.round(mine.corners).astype(int).tolist()) if tuple(c) not in a]
        same += not differs
        for i in differs:
            corners = np.array([data.picks[stem][n].corners[m] for n, m in zip(data.pickers, r.members[i])])
            d = np.abs(corners[:, None] - corners[None])
            inter = np.clip(BOX - d, 0, None).prod(-1)
            summed = (inter / (2 * BOX**2 - inter)).sum(1) - 1.0
            rounded = [tuple(c) for c in np.round(corners).astype(int).tolist()]
            hit = [j for j, c in enumerate(rounded) if c in a]
            if hit and np.isclose(summed[hit[0]], summed.max(), rtol=0, atol=1e-12):
                ties += 1
            else:
                other += 1
    return same, ties, other


def empiar10017(folder: Path, repic_out: Path | None) -> None:
    """Accuracy and runtime on the real EMPIAR-10017 set (../shared/data/picking/empiar10017): each
    picker and the consensus on the micrograph with the expert set (y flipped, 4096 px), by
    REPIC's pixel masks (every box 180 px, as REPIC's normative BOX files) and by one-to-one
    matching within 54 px (half the 108 px diameter); runtime and ILP statuses for all 12."""
    from ackmeans_torch.io.coords import read_picks
    from ackmeans_torch.picking.evaluate import evaluate_picks

    names = ("crYOLO", "deepPicker", "topaz")
    stem = "Falcon_2012_06_12-14_33_35_0"
    ref = {stem: read_picks(folder / "ground_truth" / f"{stem}.csv")}
    data = load_pickers({n: folder / n for n in names})
    sets = {n: data.picks[stem][n] for n in names}
    if repic_out is not None:
        sets["REPIC 0.2.1 (its own run)"] = read_box(repic_out / f"{stem}.box")
        stems = sorted(data.picks)
        same, ties, other = compare(run_consensus(data, repic_compat=True, box_size=BOX), data, repic_out, stems)
        print(f"repic_compat vs REPIC 0.2.1 on {len(stems)} micrographs: {same} identical, {ties} particles "
              f"differing by a representative tie, {other} other differences")
    for label, kw in (("consensus 3-of-3, repic_compat", dict(repic_compat=True, box_size=BOX)),
                      ("consensus 3-of-3 (defaults)", {}), ("consensus 2-of-3 (defaults)", dict(min_pickers=2))):
        t0 = time.perf_counter()
        res = run_consensus(data, **kw)
        dt = time.perf_counter() - t0
        statuses = {}
        for r in res:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        print(f"{label}: 12 micrographs in {dt:.2f} s, {sum(len(r.picks) for r in res)} particles, "
              f"micrograph statuses {statuses}, components to HiGHS {sum(r.ilp_components for r in res)}")
        sets[label] = next(r for r in res if r.stem == stem).picks
    print(f"\n{stem} against the expert set (629 particles)")
    print("| picks | n | pixel P | pixel R | pixel F1 | match P | match R | match F1 |")
    print("|---|---|---|---|---|---|---|---|")
    for label, picks in sets.items():
        px = evaluate_picks({stem: picks}, ref, methods=("pixel",), shape=(4096, 4096), box_size=BOX,
                            reference_box_size=BOX, flip_y=4096)[-1]
        mt = evaluate_picks({stem: picks}, ref, methods=("match",), radius=54.0, flip_y=4096)[-1]
        print(f"| {label} | {len(picks)} | {px['precision']:.3f} | {px['recall']:.3f} | {px['f1']:.3f} | "
              f"{mt['precision']:.3f} | {mt['recall']:.3f} | {mt['f1']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repic", type=Path, default=None, help="directory containing REPIC's repic package")
    ap.add_argument("--repic-mics", type=int, default=100, help="micrographs of the 'many' case given to REPIC")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cases", default="many,large")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads; on a shared 2-core machine 2 threads ran the cell list 20x slower")
    ap.add_argument("--empiar", type=Path, default=None,
                    help="../shared/data/picking/empiar10017: print accuracy on the real set and stop")
    ap.add_argument("--repic-out", type=Path, default=None, help="REPIC's output folder for --empiar")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.empiar is not None:
        empiar10017(args.empiar, args.repic_out)
        return
    cases = {"many": (1000, 300), "large": (10, 10_000)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            n_mics, per = cases[case]
            folder = Path(tmp) / case
            synthesise(folder, n_mics, per, seed=0)
            time_ours(folder, args.device)  # warm-up: first-call library loading is not per-micrograph work
            t_read, t_def, res_def = time_ours(folder, args.device)
            _, t_compat, res_compat = time_ours(folder, args.device, repic_compat=True, box_size=BOX)
            statuses = {}
            for r in res_def + res_compat:
                statuses[r.status] = statuses.get(r.status, 0) + 1
            row = dict(case=case, mics=n_mics, boxes=per, read_s=t_read, ours_s=t_def, ours_compat_s=t_compat,
                       ours_per_mic_ms=1e3 * t_compat / n_mics, statuses=statuses)
            if args.repic is not None:
                k = min(args.repic_mics, n_mics)
                t_rep, t_own, out = time_repic(args.repic.resolve(), folder, k, Path(tmp) / f"repic_{case}")
                row.update(repic_mics=k, repic_per_mic_ms=1e3 * t_rep / k, repic_own_ms=1e3 * t_own / k,
                           speedup=(t_own / k) / (t_compat / n_mics), agreement=compare(res_compat, data_of(folder),
                                                                           out, [f"mic_{i:05d}" for i in range(k)]))
            rows.append(row)
            print(row, flush=True)
    print(f"\ndevice: {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}),"
          f" torch threads {args.threads}")
    print("| case | micrographs × boxes/picker | read (s) | ours default (s) | ours compat (s) | ours ms/mic |"
          " REPIC ms/mic wall (mics run) | REPIC ms/mic own timing | speed-up vs own timing |"
          " compat = REPIC (mics identical / tie-only particles / other) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rep = (f"{r['repic_per_mic_ms']:.0f} ({r['repic_mics']}) | {r['repic_own_ms']:.0f} | {r['speedup']:.0f}× | "
               f"{r['agreement'][0]}/{r['repic_mics']} / {r['agreement'][1]} / {r['agreement'][2]}"
               if "speedup" in r else "– | – | – | –")
        print(f"| {r['case']} | {r['mics']} × {r['boxes']} | {r['read_s']:.2f} | {r['ours_s']:.2f} | "
              f"{r['ours_compat_s']:.2f} | {r['ours_per_mic_ms']:.1f} | {rep} |")


if __name__ == "__main__":
    main()
