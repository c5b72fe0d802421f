"""The three speed ratios in one table, each taken within this one run (a shared machine's load
changes between runs): ours vs faiss per K-means iteration, ours vs REPIC (whole process and
core), ours vs RELION Class2D per iteration. Every row prints the torch threads and the load
average it ran under.

* K-means: ``bench_kmeans.py``'s problem (10,000 × 4,096, k = 100, same initial centres), this
  engine's K-means against ``faiss.Kmeans`` (``pip install faiss-cpu``, the ``bench`` extra),
  seconds per assignment pass.
* Consensus: ``bench_consensus.py``'s "many" case on ``--mics`` micrographs (~300 boxes per
  picker). Whole process: ``ackmeans-torch consensus`` in a fresh process (imports, reading,
  solving, writing) against REPIC's ``get_cliques`` + ``run_ilp`` commands; core: our
  ``run_consensus`` against REPIC's own per-micrograph timings (graph, cliques, ILP). REPIC is
  github.com/ccameron/REPIC, given with ``--repic DIR`` (the folder holding its ``repic``
  package, e.g. a snapshot unpacked under /tmp, never in this repository; PyPI's ``repic`` is an
  unrelated package). Without it the row says so.
* RELION Class2D: RELION takes ~20 min per iteration on one thread here, so it is not re-run:
  ``--relion-seconds`` is its measured iteration 1 (``bench_relion2d.py``, README "RELION
  Class2D side by side": 1,270 s on the 2,000-image SNR 1/10 set, ``--j 1``, load 3–3.5), and
  ours is re-measured now on a set of the same size and sampling (2,000 × 64 px, K = 20, 128
  angles, ±3 px: the default main job's), seconds per MRA iteration with kept spectra.

    OMP_NUM_THREADS=1 python scripts/bench_ratios.py --repic /tmp/repic_src
    OMP_NUM_THREADS=1 python scripts/bench_ratios.py --mics 20 --kmeans-n 2000   # quicker
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_consensus import PICKERS, synthesise, time_ours, time_repic  # noqa: E402
from bench_kmeans import make_data, run_engine, run_faiss  # noqa: E402

from ackmeans_torch.cluster.engine import SquaredEuclidean  # noqa: E402
from ackmeans_torch.cluster.init import init_random_items  # noqa: E402
from ackmeans_torch.cluster.penalties import NoPenalty  # noqa: E402


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _row(what: str, ours: str, theirs: str, ratio: str, note: str) -> str:
    return f"| {what} | {ours} | {theirs} | {ratio} | {torch.get_num_threads()} | {_load()} | {note} |"


def kmeans_row(n: int, dim: int, k: int, iters: int) -> str:
    x = make_data(n, dim, k, seed=0)
    init = init_random_items(SquaredEuclidean(x), k, generator=torch.Generator().manual_seed(1))
    run_engine(x, init, NoPenalty(), 1, 1)  # warm-up: BLAS threads, allocator
    ours, _, _ = run_engine(x, init, NoPenalty(), iters, 1)
    if importlib.util.find_spec("faiss") is None:
        return _row("K-means, s per iteration", f"{ours:.3f}", "faiss not installed", "-",
                    f"{n} × {dim}, k = {k}")
    theirs, _, done = run_faiss(x, init, iters)
    return _row("K-means, s per iteration", f"{ours:.3f}", f"faiss {theirs:.3f}",
                f"faiss ÷ ours = {theirs / ours:.2f}", f"{n} × {dim}, k = {k}, faiss ran {done} iterations")


def consensus_rows(repic: Path | None, n_mics: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "picks"
        synthesise(folder, n_mics, 300, seed=0)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ackmeans_torch.cli.main", "consensus",
                        f"pickers=[{','.join(str(folder / p) for p in PICKERS)}]", "box_size=180",
                        f"out_dir={Path(tmp) / 'ours'}"],
                       check=True, capture_output=True, text=True)
        whole = time.perf_counter() - start
        read, core, _ = time_ours(folder, "cpu")
        note = f"{n_mics} micrographs × ~300 boxes per picker"
        if repic is None:
            return [_row("consensus, whole process s", f"{whole:.2f}", "REPIC not given (--repic)", "-", note),
                    _row("consensus, core s", f"{core:.3f}", "REPIC not given (--repic)", "-",
                         note + f"; our reading {read:.2f} s apart")]
        work = Path(tmp) / "repic"
        work.mkdir()
        repic_wall, repic_core, _ = time_repic(repic, folder, n_mics, work)
        return [_row("consensus, whole process s", f"{whole:.2f}", f"REPIC {repic_wall:.2f}",
                     f"{repic_wall / whole:.1f}×", note + "; both start fresh interpreters"),
                _row("consensus, core s", f"{core:.3f}", f"REPIC {repic_core:.2f}",
                     f"{repic_core / core:.0f}×", note + f"; REPIC's own timings; our reading {read:.2f} s apart")]


def class2d_row(relion_seconds: float, n: int) -> str:
    from ackmeans_torch.data.simulated import Simulation, SimulatedSource
    from ackmeans_torch.ops.align import AlignOptions

    per_centre = max(1, n // 20)
    images = SimulatedSource.from_spec(Simulation(per_centre=per_centre), seed=0).to_tensor()
    references = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:20]]
    options = AlignOptions()
    spectra = options.spectra(images, mask_radius=31.0)
    start = time.perf_counter()
    distances = options.align(spectra, references, mode="distances", mask_radius=31.0)
    options.align_pairs(spectra, references, distances.argmin(1), mask_radius=31.0)
    ours = time.perf_counter() - start
    return _row("2D classification, s per iteration", f"{ours:.2f}", f"RELION {relion_seconds:.0f} (not re-run)",
                f"{relion_seconds / ours:.0f}×",
                f"{len(images)} × 64 px, K = 20, 128 angles, ±3 px; RELION's iteration 1 from bench_relion2d.py "
                "(--j 1, load 3–3.5), ours now")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repic", type=Path, default=None, help="folder holding REPIC's repic package")
    parser.add_argument("--mics", type=int, default=100, help="micrographs of the consensus case")
    parser.add_argument("--kmeans-n", type=int, default=10_000)
    parser.add_argument("--kmeans-dim", type=int, default=4096)
    parser.add_argument("--kmeans-iters", type=int, default=20)
    parser.add_argument("--relion-seconds", type=float, default=1270.0)
    parser.add_argument("--class2d-n", type=int, default=2000)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print("| ratio | ours | theirs | speed-up | threads | load 1/5/15 min | note |")
    print("|---|---|---|---|---|---|---|")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        print(kmeans_row(args.kmeans_n, args.kmeans_dim, 100, args.kmeans_iters), flush=True)
    for row in consensus_rows(args.repic, args.mics):
        print(row, flush=True)
    print(class2d_row(args.relion_seconds, args.class2d_n), flush=True)


if __name__ == "__main__":
    main()
