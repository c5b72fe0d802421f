"""The same particle STAR through RELION's Class2D and through ours, scored on the simulated truth.

Rows: RELION 3.1 Class2D (hard assignment ``rlnClassNumber`` of its last finished iteration's
``_data.star``), MRA + ACK-means with leave-one-out distances and reseeding of classes under one
image (``ClusterOptions(leave_one_out=True, min_class_size=1)``), MRA + ACK-means with the paper's
defaults (``leave_one_out=False, min_class_size=0``) and MRA + plain K-means (neither), all
with the same ``max_iter`` and ``sigma0`` (``--max-iter``, ``--sigma0``). Each is scored with
``eval/`` against the truth ``ackmeans-torch simulate`` writes (true ``rlnAngleRot/Tilt`` and the
orientation-centre label ``rlnBeamTiltClass``, read from the input STAR and matched by image name):
median within-class angle, fraction of within-class pairs under 10°, class-size CV, empty and
singleton classes, ARI, and wall time per iteration and in total. Every row carries the thread
setting it ran under (``torch.get_num_threads()``, ``OMP_NUM_THREADS``, RELION's ``--j``) and the
machine's load (``os.getloadavg()``), because on a shared machine the timings mean nothing without
them.

    ackmeans-torch simulate out_dir=sets/snr10                 # 2,000 images, 64 px, 20 views
    python scripts/bench_relion2d.py --star sets/snr10/particles.star --run-relion --relion-iter 3
    python scripts/bench_relion2d.py --star sets/snr10/particles.star --relion-dir sets/snr10/r2d

``--run-relion`` runs the reference command from the STAR's folder (its image names hold from
there), niced, one thread unless ``--j``; without it ``--relion-dir`` scores a run made already
(its timings then come from the files' times, and from ``--relion-start`` when given).

RELION's time per iteration is the time between consecutive ``run_itNNN_data.star`` files (the
setup before iteration 1, initial noise spectra and references, is in the total only); ours is the
run's total (preprocessing included) divided by its assignment passes (the initial one counted).
"""

from __future__ import annotations

import argparse
import os

# one thread unless the caller says otherwise: set before torch starts OpenMP
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ackmeans_torch import (  # noqa: E402
    MRA,
    ClusterOptions,
    NoPenalty,
    QuadraticPenalty,
    open_source,
    run_classification,
)
from ackmeans_torch.eval.angular import evaluate_classification  # noqa: E402
from ackmeans_torch.io.star import read_particles, read_star  # noqa: E402
from ackmeans_torch.sim.dataset import CENTRE_LABEL_COLUMN  # noqa: E402

COLUMNS = ("set", "method", "iterations", "s/iter", "total s", "median angle (°)", "frac < 10°",
           "size CV", "empty", "singletons", "ARI", "torch threads", "OMP_NUM_THREADS",
           "RELION --j", "loadavg 1/5/15")


def relion_command(star: str, *, n_classes: int, n_iter: int, diameter: float, threads: int,
                   out: str = "r2d/run") -> list[str]:
    """The reference Class2D command (phase-flipped CTF data, psi step 6°, offsets ±3 px)."""
    return ["relion_refine", "--i", star, "--o", out, "--K", str(n_classes), "--iter", str(n_iter),
            "--tau2_fudge", "2", "--ctf", "--ctf_phase_flipped", "--psi_step", "6",
            "--offset_range", "3", "--offset_step", "1", "--particle_diameter", f"{diameter:g}",
            "--zero_mask", "--j", str(threads)]


def truth_of(star: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image names, true (rot, tilt) in degrees and centre labels of a simulated STAR."""
    particles = read_particles(star).particles
    if CENTRE_LABEL_COLUMN not in particles or "rlnAngleTilt" not in particles:
        raise SystemExit(f"{star}: no simulated truth (rlnAngleRot/Tilt, {CENTRE_LABEL_COLUMN})")
    return (particles["rlnImageName"].astype(str).to_numpy(),
            particles[["rlnAngleRot", "rlnAngleTilt"]].to_numpy(dtype=np.float64),
            particles[CENTRE_LABEL_COLUMN].to_numpy())


def load_during(load_log: Path | None, start: float, end: float) -> str | None:
    """Mean 1/5/15-minute load over [start, end] from a log of ``<epoch> <contents of
    /proc/loadavg>`` lines (sampled while a long run went), or None without samples."""
    if load_log is None or not load_log.is_file():
        return None
    rows = [line.split() for line in load_log.read_text().splitlines() if line.strip()]
    samples = np.array([[float(v) for v in r[1:4]] for r in rows if start <= float(r[0]) <= end])
    if not len(samples):
        return None
    return "/".join(f"{v:.2f}" for v in samples.mean(0)) + f" (mean of {len(samples)})"


def now_load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def score(labels0: np.ndarray, n_classes: int, rot_tilt: np.ndarray, truth: np.ndarray) -> dict:
    figures, _ = evaluate_classification(labels0, n_classes, rot_tilt, truth=truth)
    return figures


def relion_row(run_dir: Path, star: Path, *, n_classes: int, iteration: int | None,
               start: float | None, load_log: Path | None, omp: str) -> dict:
    """Score the hard assignment of RELION's last finished (or the given) iteration."""
    done = sorted(run_dir.glob("run_it[0-9][0-9][0-9]_data.star"))
    numbers = [int(re.search(r"_it(\d{3})_", p.name).group(1)) for p in done]
    finished = [n for n in numbers if n > 0 and (iteration is None or n <= iteration)]
    if not finished:
        raise SystemExit(f"{run_dir}: no finished RELION iteration (run_it001_data.star)")
    last = max(finished)
    data = read_star(run_dir / f"run_it{last:03d}_data.star")["particles"]
    names, rot_tilt, truth = truth_of(star)
    order = {name: i for i, name in enumerate(names)}
    rows = np.array([order[n] for n in data["rlnImageName"].astype(str)])
    labels0 = np.full(len(names), -1)
    labels0[rows] = data["rlnClassNumber"].to_numpy(dtype=np.int64) - 1
    if (labels0 < 0).any():
        raise SystemExit(f"{run_dir}: RELION's data.star lacks {(labels0 < 0).sum()} images")
    times = [(run_dir / f"run_it{n:03d}_data.star").stat().st_mtime for n in range(last + 1)]
    per_iter = np.diff(times)
    total = times[-1] - (start if start is not None else times[0])
    header = (run_dir / f"run_it{last:03d}_optimiser.star").read_text().splitlines()[:2]
    args = shlex.split(header[1].lstrip("# ")) if len(header) > 1 else []
    threads = args[args.index("--j") + 1] if "--j" in args else "1 (default)"
    load = load_during(load_log, times[0] if start is None else start, times[-1])
    return {"method": "RELION 3.1 Class2D (hard rlnClassNumber)", "iterations": last,
            "s/iter": float(per_iter.mean()), "total s": total if start is not None else None,
            "total_note": "" if start is not None else "from it000",
            **score(labels0, n_classes, rot_tilt, truth), "torch threads": "-",
            "OMP_NUM_THREADS": omp,
            "RELION --j": threads, "loadavg": load or now_load() + " (at scoring)",
            "per_iter": per_iter.tolist(), "command": "relion_refine " + header[1].lstrip("# ")}


def ours_rows(star: Path, *, n_classes: int, max_iter: int, sigma0: float, seed: int,
              relion_j: str) -> list:
    """MRA with the three clustering choices of the module docstring, through the library; every
    loop option is given here, so a row does not change when the library's defaults do."""
    names, rot_tilt, truth = truth_of(star)
    choices = [
        ("MRA + ACK-means (leave-one-out, min_class_size=1)", QuadraticPenalty(beta=0.5),
         {"leave_one_out": True, "min_class_size": 1}),
        ("MRA + ACK-means (paper defaults)", QuadraticPenalty(beta=0.5),
         {"leave_one_out": False, "min_class_size": 0}),
        ("MRA + K-means", NoPenalty(), {"leave_one_out": False, "min_class_size": 0}),
    ]
    rows = []
    for label, rule, extra in choices:
        source = open_source(str(star))
        options = ClusterOptions(n_classes=n_classes, max_iter=max_iter, sigma0=sigma0,
                                 seed=seed, **extra)
        start = time.perf_counter()
        run = run_classification(source, pipeline=MRA(), rule=rule, options=options)
        total = time.perf_counter() - start
        passes = len(run.result.history)
        labels0 = run.result.labels.cpu().numpy()
        order = {name: i for i, name in enumerate(names)}
        aligned = np.array([order[n] for n in source.particles["rlnImageName"].astype(str)])
        rows.append({"method": label, "iterations": passes - 1, "s/iter": total / passes,
                     "total s": total, "total_note": "",
                     **score(labels0, n_classes, rot_tilt[aligned], truth[aligned]),
                     "torch threads": torch.get_num_threads(),
                     "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
                     "RELION --j": relion_j, "loadavg": now_load(),
                     "converged": run.result.converged})
    return rows


def fmt(row: dict, name: str) -> str:
    value = {"loadavg 1/5/15": row.get("loadavg"), "median angle (°)": row.get("median_angle"),
             "frac < 10°": row.get("frac_below_10"), "size CV": row.get("size_cv"),
             "ARI": row.get("ari")}.get(name, row.get(name))
    if name == "total s" and value is None:
        return f"— ({row['total_note']})"
    if name == "iterations" and "converged" in row:
        return f"{value}{' (converged)' if row['converged'] else ''}"
    if isinstance(value, float):
        return f"{value:.1f}" if name in ("s/iter", "total s") else f"{value:.3f}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r, c) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--star", type=Path, required=True, help="simulated particles.star")
    parser.add_argument("--label", default=None, help="the set's name in the table")
    parser.add_argument("--n-classes", type=int, default=20)
    parser.add_argument("--max-iter", type=int, default=10, help="our iterations at most")
    parser.add_argument("--sigma0", type=float, default=0.05,
                        help="our stop: fraction of changed labels at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--relion-dir", type=Path, default=None,
                        help="folder of run_itNNN_* (default: <star folder>/r2d)")
    parser.add_argument("--run-relion", action="store_true", help="run RELION first")
    parser.add_argument("--relion-iter", type=int, default=None,
                        help="--iter of a RELION run started here (default 3); else the "
                             "iteration to score (default: the last finished one)")
    parser.add_argument("--j", type=int, default=1, help="RELION threads (--j)")
    parser.add_argument("--diameter", type=float, default=None,
                        help="--particle_diameter Å (default: 90%% of the box, our mask)")
    parser.add_argument("--relion-start", default=None,
                        help="when the RELION run started (epoch s or ISO 8601), for its total")
    parser.add_argument("--load-log", type=Path, default=None,
                        help="'<epoch> <loadavg>' lines sampled during the RELION run")
    parser.add_argument("--relion-omp", default="not recorded",
                        help="OMP_NUM_THREADS the RELION run of --relion-dir had")
    parser.add_argument("--skip-ours", action="store_true",
                        help="no runs of ours (their rows come from --ours-json when it exists)")
    parser.add_argument("--skip-relion", action="store_true", help="no RELION row")
    parser.add_argument("--ours-json", type=Path, default=None,
                        help="where our rows are saved, to be shown beside RELION's later")
    args = parser.parse_args()

    star = args.star.resolve()
    relion_dir = (args.relion_dir or star.parent / "r2d").resolve()
    start = None
    if args.relion_start:
        text = args.relion_start
        start = float(text) if re.fullmatch(r"[\d.]+", text) else \
            datetime.fromisoformat(text).timestamp()
    if args.run_relion:
        particles = read_particles(star).particles
        box = float(particles["rlnImageSize"].iloc[0]) * float(
            particles["rlnImagePixelSize"].iloc[0])
        diameter = args.diameter or 0.9 * box
        relion_dir.mkdir(parents=True, exist_ok=True)
        command = relion_command(star.name, n_classes=args.n_classes, n_iter=args.relion_iter or 3,
                                 diameter=diameter, threads=args.j,
                                 out=os.path.relpath(relion_dir / "run", star.parent))
        print("$ (cd", star.parent, "&& nice -n 10", shlex.join(command) + ")", flush=True)
        start = time.time()
        with open(relion_dir / "relion.log", "w") as log:
            subprocess.run(["nice", "-n", "10", *command], cwd=star.parent, stdout=log,
                           stderr=subprocess.STDOUT, check=True)
    rows = [] if args.skip_relion else [relion_row(relion_dir, star, n_classes=args.n_classes,
                       iteration=args.relion_iter, start=start,
                       load_log=args.load_log,
                       omp=os.environ["OMP_NUM_THREADS"] if args.run_relion else args.relion_omp)]
    if rows:
        print(rows[0]["command"], "\nRELION seconds per iteration:",
              ", ".join(f"{t:.0f}" for t in rows[0]["per_iter"]), flush=True)
    if not args.skip_ours:
        ours = ours_rows(star, n_classes=args.n_classes, max_iter=args.max_iter,
                         sigma0=args.sigma0, seed=args.seed,
                         relion_j="-")
        if args.ours_json is not None:
            args.ours_json.write_text(json.dumps(ours, indent=1))
        rows += ours
    elif args.ours_json is not None and args.ours_json.is_file():
        rows += json.loads(args.ours_json.read_text())
    label = args.label or star.parent.name
    for row in rows:
        row["set"] = label
    print(markdown(rows))
    if not args.skip_relion:
        relion = rows[0]["s/iter"]
        for row in rows[1:]:
            print(f"{row['method']}: RELION's time per iteration / ours = "
                  f"{relion / row['s/iter']:.0f}")


if __name__ == "__main__":
    main()
