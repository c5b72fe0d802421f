"""3D classification with known poses on the 70S benchmark set: RELION Class3D ``--skip_align``,
an oracle (``oracle_row``) and our rows (``our_rows``), scored on the simulated truth.

The set is ``ackmeans-torch simulate experiment=hetero3d_70s`` (3 states of the 70S ribosome,
64 px, CTF, pose noise 2°/1 px), composed from that config with the sizes given here (``--n``,
``--snr``, ``--populations`` 50/30/20 or the skewed 70/20/10), written with its state maps and
truth. RELION's initial reference is made as RELION users make it: ``relion_reconstruct --ctf``
of all particles at their (noisy) poses, low-passed to ``--lowpass`` Å by ``relion_image_handler``.
Then ``relion_refine --skip_align --K 3 --tau2_fudge 4 ...`` (``relion_commands`` has the exact
lines) runs on the same STAR, CPU, niced, ``--j`` threads.

Figures per row: iterations, seconds per iteration (RELION: the mean time between consecutive
``run_itNNN_data.star`` files, so the setup before iteration 1 is only in the total), total wall
time, the fraction of particles in the right class after the best one-to-one matching of classes
to states (Hungarian on the confusion table), the class sizes, and the thread setting and
``os.getloadavg()`` of the machine, without which timings on a shared machine mean nothing.

    python scripts/bench_class3d.py --n 3000 --iter 3              # minutes on 2 cores
    python scripts/bench_class3d.py --n 30000 --iter 25 --populations 70/20/10 --snr 0.0333
    python scripts/bench_class3d.py --n 3000 --skip-relion          # oracles and our rows
"""

from __future__ import annotations

import argparse
import os

# one thread unless the caller says otherwise: set before torch starts OpenMP
os.environ.setdefault("OMP_NUM_THREADS", "1")

import re  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from ackmeans_torch.cli.app import CONFIG_DIR  # noqa: E402
from ackmeans_torch.data.prepared import ctf_of  # noqa: E402
from ackmeans_torch.eval.metrics import matched_accuracy  # noqa: E402
from ackmeans_torch.io.star import read_particles, read_star  # noqa: E402
from ackmeans_torch.ops.fourier import ifft2c  # noqa: E402
from ackmeans_torch.ops.projection import FourierProjector, relion_origin_to_shift  # noqa: E402
from ackmeans_torch.ops.rotations import euler_to_matrix  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAP = REPO.parent / "shared" / "data" / "volumes" / "ribosome70S_65px.mrc"
COLUMNS = ("set", "method", "N", "K", "iterations", "s/iter", "total s", "accuracy",
           "class sizes", "torch threads", "OMP_NUM_THREADS", "RELION --j", "loadavg 1/5/15")


def simulate_set(out_dir: Path, *, n: int, snr: float, populations: list[float], seed: int,
                 angle_noise: float, shift_noise: float):
    """The benchmark set (``experiment=hetero3d_70s`` with these sizes and pose noise), written
    to ``out_dir``; returns the ``HeteroSet``."""
    fractions = "[" + ",".join(f"{p:g}" for p in populations) + "]"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("simulate", overrides=[
            "experiment=hetero3d_70s", f"sim.volume={MAP}", f"sim.n_particles={n}",
            f"sim.snr={snr}", f"sim.populations={fractions}",
            f"sim.angle_noise_deg={angle_noise}", f"sim.shift_noise_px={shift_noise}"])
    data = instantiate(cfg.sim).run(seed=seed)
    data.write(out_dir)
    return data


def relion_commands(*, n_classes: int, n_iter: int, diameter: float, lowpass: float,
                    threads: int) -> list[list[str]]:
    """The reference lines, run from the set's folder: initial map, its low-pass, Class3D."""
    return [
        ["relion_reconstruct", "--i", "particles.star", "--o", "ref_full.mrc", "--ctf"],
        ["relion_image_handler", "--i", "ref_full.mrc", "--o", "ref_lp.mrc",
         "--lowpass", f"{lowpass:g}"],
        ["relion_refine", "--i", "particles.star", "--ref", "ref_lp.mrc", "--K", str(n_classes),
         "--skip_align", "--tau2_fudge", "4", "--iter", str(n_iter),
         "--particle_diameter", f"{diameter:g}", "--ini_high", f"{lowpass:g}",
         "--flatten_solvent", "--zero_mask", "--ctf", "--j", str(threads), "--o", "r3d/run"],
    ]


def now_load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def relion_row(set_dir: Path, truth: np.ndarray, *, start: float, threads: int) -> dict:
    """Score the hard ``rlnClassNumber`` of RELION's last finished iteration."""
    run_dir = set_dir / "r3d"
    done = sorted(run_dir.glob("run_it[0-9][0-9][0-9]_data.star"))
    numbers = [int(re.search(r"_it(\d{3})_", p.name).group(1)) for p in done]
    last = max(numbers)
    data = read_star(run_dir / f"run_it{last:03d}_data.star")["particles"]
    names = read_particles(set_dir / "particles.star").particles["rlnImageName"].astype(str)
    order = {name: i for i, name in enumerate(names)}
    rows = np.array([order[name] for name in data["rlnImageName"].astype(str)])
    labels = np.full(len(names), -1)
    labels[rows] = data["rlnClassNumber"].to_numpy(dtype=np.int64)
    times = [(run_dir / f"run_it{i:03d}_data.star").stat().st_mtime for i in range(last + 1)]
    return {"method": "RELION 3.1 Class3D --skip_align (hard rlnClassNumber)",
            "iterations": last, "s/iter": float(np.diff(times).mean()) if last else None,
            "total s": times[-1] - start, "accuracy": matched_accuracy(labels, truth),
            "class sizes": "/".join(str(int(c)) for c in np.bincount(labels)[1:]),
            "torch threads": "-", "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
            "RELION --j": threads, "loadavg 1/5/15": now_load(),
            "per_iter": np.diff(times).tolist()}


def oracle_row(data, truth: np.ndarray, *, batch_size: int = 500) -> dict:
    """The assignment by the true state maps: each particle to the state whose CTF × projection
    at the particle's written (noisy) pose is nearest in plain L2 over the whole box (no mask,
    no whitening): what pose noise and SNR leave of the truth, for any classifier."""
    particles, images = data.particles, data.images
    size, pixel = images.shape[-1], data.voxel_size
    angles = torch.tensor(particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    rotations = euler_to_matrix(angles).float()
    origins = torch.tensor(particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()) / pixel
    shifts = relion_origin_to_shift(origins).float()
    start = time.perf_counter()
    distances = torch.empty(len(images), len(data.state_maps))
    for k, state_map in enumerate(data.state_maps):
        projector = FourierProjector(state_map)
        for i in range(0, len(images), batch_size):
            rows = slice(i, i + batch_size)
            ctf = ctf_of(particles.iloc[rows], size=size, pixel_size=pixel)
            model = ifft2c(projector.spectra(rotations[rows], shifts[rows]) * ctf).real
            distances[rows, k] = ((images[rows] - model) ** 2).sum((-2, -1))
    labels = distances.argmin(1).numpy() + 1
    return {"method": "oracle: true maps, written poses, L2 over the box", "iterations": 1,
            "s/iter": time.perf_counter() - start, "total s": time.perf_counter() - start,
            "accuracy": matched_accuracy(labels, truth),
            "class sizes": "/".join(str(int(c)) for c in np.bincount(labels)[1:]),
            "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], "RELION --j": "-",
            "loadavg 1/5/15": now_load()}


def our_rows(set_dir: Path, truth: np.ndarray, *, n_classes: int, resolution: float,
             refine: int, rules: list[str]) -> list[dict]:
    """``ackmeans_torch.class3d.run_class3d`` on the written STAR with each size rule in ``rules``
    (ACK-means β 0.5, K-means, EQK-means, soft EM with ACK-means' scores) at the target
    ``resolution``; and the oracle of our distance: the true state maps scored by ``SliceMatch``
    (per-particle scale, since the maps are in the simulator's units and the particles
    normalised) at the written poses and, with ``refine``, at the refined ones.

    What ``run_class3d`` does before its loop is the same for every rule, so it is done once
    here, as it does it, and timed: ``refine`` rounds of local pose refinement, then the default
    (variability) start at those poses; each rule then runs from those maps
    (``init=maps``) on the table with the refined poses. A row's total is the shared part plus
    its own run."""
    import copy

    from ackmeans_torch.class3d import Class3DOptions, run_class3d
    from ackmeans_torch.class3d.model import SliceMatch
    from ackmeans_torch.class3d.poses import refine_poses, with_poses
    from ackmeans_torch.class3d.run import _m_step, initial_maps
    from ackmeans_torch.cluster.options import ClusterOptions
    from ackmeans_torch.cluster.penalties import EqualSize, NoPenalty, QuadraticPenalty
    from ackmeans_torch.data.prepared import PreprocessOptions, preprocess
    from ackmeans_torch.data.stack import open_source
    from ackmeans_torch.io.mrc import load_volume, write_volume

    source = open_source(set_dir / "particles.star")
    maps = torch.stack([load_volume(set_dir / f"state_{k + 1:03d}.mrc")[0]
                        for k in range(n_classes)])
    prepared = preprocess(source, PreprocessOptions(phase_flip=False))

    def one_pass(method: str, start: float, labels: np.ndarray) -> dict:
        return {"method": method, "iterations": 1, "s/iter": time.perf_counter() - start,
                "total s": time.perf_counter() - start,
                "accuracy": matched_accuracy(labels, truth),
                "class sizes": "/".join(str(int(c)) for c in np.bincount(labels)),
                "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], "RELION --j": "-",
                "loadavg 1/5/15": now_load()}

    def oracle(images, poses: str) -> dict:
        start = time.perf_counter()
        scorer = SliceMatch(images, resolution=resolution, mask_radius=prepared.mask_radius,
                            scale=True)
        labels = torch.cat([scorer.dissimilarity(torch.arange(i, min(i + 1024, len(source))),
                                                 maps).argmin(1)
                            for i in range(0, len(source), 1024)]).numpy()
        return one_pass(f"oracle: true maps, our distance at {resolution:g} Å (scaled), "
                        f"{poses} poses", start, labels)

    same = lambda index: index  # noqa: E731 (one process)

    def partition(images, poses: str, folds: int = 10) -> dict:
        # the ceiling of a loop on maps made from the data: each tenth of the particles scored
        # by the maps our M-step makes of the true partition of the other nine tenths (with the
        # loop's default distance), so no particle is in a map it is scored by
        start = time.perf_counter()
        scorer = SliceMatch(images, resolution=resolution, mask_radius=prepared.mask_radius,
                            scale=Class3DOptions().scale)
        states = torch.from_numpy(truth - truth.min()).long()
        fold = torch.arange(len(states)) % folds
        empty = torch.zeros((n_classes,) + (scorer.box_size,) * 3)
        labels = np.empty(len(states), dtype=np.int64)
        for f in range(folds):
            members, held = (torch.nonzero(fold != f)[:, 0], torch.nonzero(fold == f)[:, 0])
            fold_maps = _m_step(scorer, members, states[members], empty, chunk_size=1024,
                                shard=same, reduce=same)
            labels[held.numpy()] = torch.cat([
                scorer.dissimilarity(held[i:i + 1024], fold_maps).argmin(1)
                for i in range(0, len(held), 1024)]).numpy()
        return one_pass(f"oracle: maps of the true partition ({folds}-fold, held out), our "
                        f"distance at {resolution:g} Å, {poses} poses", start, labels)

    rows = [oracle(prepared, "written")]
    refine_seconds = 0.0
    if refine:
        begin = time.perf_counter()
        rotations, shifts = refine_poses(SliceMatch(prepared, resolution=resolution,
                                                    mask_radius=prepared.mask_radius),
                                         rounds=refine, chunk_size=1024, shard=same,
                                         reduce=same)
        refined = with_poses(prepared.particles, rotations, shifts)
        prepared, source = copy.copy(prepared), copy.copy(source)
        prepared.particles = source.particles = refined
        refine_seconds = time.perf_counter() - begin
        rows.append(oracle(prepared, f"refined ({refine} rounds)"))
    rows.append(partition(prepared, f"refined ({refine} rounds)" if refine else "written"))
    print(markdown(rows).splitlines()[-1], flush=True)
    begin = time.perf_counter()
    start_maps = initial_maps(
        SliceMatch(prepared, resolution=resolution, mask_radius=prepared.mask_radius),
        Class3DOptions(resolution=resolution, refine_poses=refine), n_classes,
        generator=torch.Generator().manual_seed(0), shard=same, reduce=same)
    paths = []
    for k, volume in enumerate(start_maps):
        paths.append(str(set_dir / f"start_{k + 1:03d}.mrc"))
        write_volume(paths[-1], volume.cpu().numpy(), prepared.pixel_size)
    shared = refine_seconds + time.perf_counter() - begin
    print(f"shared part (pose refinement {refine} rounds + variability start): {shared:.1f} s",
          flush=True)
    settings = {"ack": ("ACK-means β 0.5", QuadraticPenalty(beta=0.5), 0.0),
                "kmeans": ("K-means", NoPenalty(), 0.0),
                "eqk": ("EQK-means", EqualSize(), 0.0),
                "soft": ("soft EM (ACK scores, τ 0.05)", QuadraticPenalty(beta=0.5), 0.05)}
    for key in rules:
        if key.startswith("ack:"):  # ACK-means at another β
            beta = float(key.split(":")[1])
            name, rule, temperature = f"ACK-means β {beta:g}", QuadraticPenalty(beta=beta), 0.0
        else:
            name, rule, temperature = settings[key]
        options = ClusterOptions(n_classes=n_classes, max_iter=25, sigma0=0.02, plateau=0,
                                 leave_one_out=False, temperature=temperature)
        run = run_class3d(source, rule=rule, options=options,
                          class3d=Class3DOptions(resolution=resolution, init="maps",
                                                 maps=tuple(paths)))
        s = run.summary
        rows.append({"method": f"ours: {name}, {resolution:g} Å, variability start"
                               + (f", poses refined ({refine} rounds)" if refine else "")
                               + ", stop at 2% changing",
                     "iterations": s["iterations"],
                     # every round is a pass, the final maps one more
                     "s/iter": s["seconds"] / (s["iterations"] + 2),
                     "total s": shared + s["seconds"], "accuracy": s["accuracy"],
                     "class sizes": "/".join(str(int(c)) for c in s["sizes"]),
                     "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], "RELION --j": "-",
                     "loadavg 1/5/15": now_load()})
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def fmt(row: dict, name: str) -> str:
    value = row.get(name)
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.1f}" if name in ("s/iter", "total s") else f"{value:.3f}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r, c) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="particles (benchmark: 30000)")
    parser.add_argument("--snr", type=float, default=0.1, help="SNR (1/10; 0.0333 for 1/30)")
    parser.add_argument("--populations", default="50/30/20",
                        help="state percentages, e.g. 50/30/20 or 70/20/10")
    parser.add_argument("--iter", type=int, default=3, help="RELION --iter (benchmark: 25)")
    parser.add_argument("--j", type=int, default=2, help="RELION threads (--j)")
    parser.add_argument("--lowpass", type=float, default=40.0,
                        help="initial reference low-pass and --ini_high (Å)")
    parser.add_argument("--diameter", type=float, default=None,
                        help="--particle_diameter Å (default: 90%% of the box)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--angle-noise", type=float, default=2.0,
                        help="RMS pose angle error (deg) of the written poses")
    parser.add_argument("--shift-noise", type=float, default=1.0,
                        help="origin error (px, s.d. per axis) of the written poses")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_class3d")
    parser.add_argument("--skip-relion", action="store_true", help="no RELION row")
    parser.add_argument("--skip-ours", action="store_true", help="no rows of ours")
    parser.add_argument("--resolution", type=float, default=12.0,
                        help="our target resolution (Å)")
    parser.add_argument("--refine-poses", type=int, default=0,
                        help="our rounds of local pose refinement (class3d.refine_poses)")
    parser.add_argument("--rules", default="ack,kmeans,eqk,soft",
                        help="our size rules, comma-separated: ack, ack:<beta>, kmeans, eqk, soft")
    args = parser.parse_args()
    if not MAP.is_file():
        raise SystemExit(f"{MAP} is absent: the 70S map lives in ../shared/data beside the repo")

    populations = [float(p) / 100 for p in args.populations.split("/")]
    label = (f"N={args.n} SNR={args.snr:g} {args.populations} pose noise "
             f"{args.angle_noise:g}°/{args.shift_noise:g} px")
    set_dir = args.out / (f"n{args.n}_snr{args.snr:g}_{args.populations.replace('/', '-')}"
                          f"_pose{args.angle_noise:g}-{args.shift_noise:g}")
    start = time.perf_counter()
    data = simulate_set(set_dir, n=args.n, snr=args.snr, populations=populations, seed=args.seed,
                        angle_noise=args.angle_noise, shift_noise=args.shift_noise)
    print(f"simulated {label} in {time.perf_counter() - start:.1f} s -> {set_dir}", flush=True)
    truth = data.states
    rows = [oracle_row(data, truth)]
    if not args.skip_relion:
        box = data.images.shape[-1] * data.voxel_size
        commands = relion_commands(n_classes=len(populations), n_iter=args.iter,
                                   diameter=args.diameter or 0.9 * box, lowpass=args.lowpass,
                                   threads=args.j)
        (set_dir / "r3d").mkdir(parents=True, exist_ok=True)
        begin = time.time()
        with open(set_dir / "r3d" / "relion.log", "w") as log:
            for command in commands:
                print("$ (cd", set_dir, "&& nice -n 10", shlex.join(command) + ")", flush=True)
                subprocess.run(["nice", "-n", "10", *command], cwd=set_dir, stdout=log,
                               stderr=subprocess.STDOUT, check=True)
        row = relion_row(set_dir, truth, start=begin, threads=args.j)
        print("RELION seconds per iteration:", ", ".join(f"{t:.0f}" for t in row["per_iter"]))
        rows.append(row)
    if not args.skip_ours:
        rows += our_rows(set_dir, truth, n_classes=len(populations), resolution=args.resolution,
                         refine=args.refine_poses, rules=args.rules.split(","))
    for row in rows:
        row.setdefault("set", label)
        row.setdefault("N", args.n)
        row.setdefault("K", len(populations))
        row.setdefault("torch threads", torch.get_num_threads())
    print(markdown(rows))


if __name__ == "__main__":
    main()
