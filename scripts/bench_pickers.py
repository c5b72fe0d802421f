"""Benchmark the pickers and REPIC's iterative loop.

Part A (simulated, truth known): ``--n`` micrographs of ``--size``² px (phantom particles,
SNR ``--snr``, 10% junk) → blob + template + CNN pickers, ``--rounds`` retraining rounds,
m-of-k consensus (``--min-pickers``). Prints precision / recall / F1 per picker and for the
consensus at every round (test micrographs), seconds per micrograph per picker, training seconds
per round and the whole loop.

Part B (real, EMPIAR-10017): the one micrograph with a JPEG: consensus of crYOLO, DeepPicker and
Topaz (3-of-3, REPIC's setting) and with our blob picker, run on the JPEG, added as a fourth
(3-of-4 and 4-of-4); precision / recall against the expert set (y flipped, centres within 54 px),
beside crYOLO alone.

Every row carries the thread setting and os.getloadavg().

    OMP_NUM_THREADS=1 python scripts/bench_pickers.py                       # ~10 min here
    OMP_NUM_THREADS=1 python scripts/bench_pickers.py --n 40 --size 1024 --rounds 3   # the issue's size
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "picking" / "empiar10017"
STEM = "Falcon_2012_06_12-14_33_35_0"


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def simulated(args) -> None:
    from ackmeans_torch.micrographs.simulate import MicrographSimulation, simulate_micrographs
    from ackmeans_torch.picking.iterate import LoopOptions, run_loop
    from ackmeans_torch.pickers.blob import BlobPicker
    from ackmeans_torch.pickers.cnn import CNNPicker
    from ackmeans_torch.pickers.template import TemplatePicker

    sim = simulate_micrographs(MicrographSimulation(n_micrographs=args.n, size=args.size, snr=args.snr,
                                                    junk_fraction=0.1, particles_per_micrograph=args.particles),
                               seed=args.seed)
    d, box = 51.2, 64
    pickers = {"blob": BlobPicker(particle_diameter=d, box_size=box, threshold=1.0, upper_threshold=args.upper),
               "template": TemplatePicker.from_volume(particle_diameter=d, box_size=box, threshold=0.15, n_views=6,
                                                      angle_step=30),
               "cnn": CNNPicker(particle_diameter=d, box_size=box, epochs=args.epochs, seed=args.seed)}
    options = LoopOptions(rounds=args.rounds, min_pickers=args.min_pickers, n_val=args.n_val,
                          train_fraction=args.train_fraction, seed=args.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_loop(sim.micrographs, pickers, options=options, truth=sim.truth, out_dir=tmp)
    total = time.perf_counter() - t0
    threads = torch.get_num_threads()
    split = list(result.split.values())
    print(f"\nA. simulated: {args.n} micrographs {args.size}² px, {args.particles} particles each, SNR {args.snr}, "
          f"10% junk; split train/val/test {split.count('train')}/{split.count('val')}/{split.count('test')}; "
          f"consensus {args.min_pickers or 'k'}-of-k; scores on the test micrographs")
    print("| round | picker | picks | precision | recall | F1 | s/micrograph | train s | threads | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in result.rounds:
        for row in r.scores:
            name = row["picker"]
            per = r.seconds.get(f"pick_{name}", r.seconds["consensus"] / args.n if name == "consensus" else None)
            reused = name not in ("consensus", "cnn") and r.index > 0
            train = r.seconds.get(f"train_{name}")
            print(f"| {r.index} | {name} | {row['n_picks']} | {row['precision']:.3f} | {row['recall']:.3f} | "
                  f"{row['f1']:.3f} | {'(round 0)' if reused else f'{per:.3f}'} | "
                  f"{'' if train is None else f'{train:.1f}'} | {threads} | {load()} |")
    print(f"whole loop: {total:.1f} s ({args.rounds + 1} rounds), threads {threads}, load {load()}")


def real(args) -> None:
    from ackmeans_torch.micrographs.io import read_micrograph
    from ackmeans_torch.io.coords import PickSet, read_csv
    from ackmeans_torch.picking.consensus import PickerData, load_pickers, run_consensus
    from ackmeans_torch.picking.evaluate import evaluate_picks
    from ackmeans_torch.pickers.blob import BlobPicker

    if not SHARED.is_dir():
        print(f"\nB. skipped: {SHARED} is absent")
        return
    data = load_pickers({n: SHARED / n for n in ("crYOLO", "deepPicker", "topaz")}, box_size=180)
    ref = {STEM: read_csv(SHARED / "ground_truth" / f"{STEM}.csv", box_size=108)}
    image = read_micrograph(SHARED / "micrographs" / f"{STEM}.jpg")
    t0 = time.perf_counter()
    ours = BlobPicker(particle_diameter=108, box_size=180, threshold=args.real_threshold).pick(image)
    seconds = time.perf_counter() - t0
    # JPEG rows run top-down: BOX y = height - row
    ours = PickSet(np.stack([ours.centres[:, 0], image.shape[0] - ours.centres[:, 1]], 1), ours.box_size, ours.scores)
    threads = torch.get_num_threads()
    print(f"\nB. EMPIAR-10017 {STEM} (4096², the JPEG), expert set {len(ref[STEM])} particles, centres within 54 px")
    print("| set | particles | precision | recall | threads | load |")
    print("|---|---|---|---|---|---|")

    def score(name, picks):
        row = evaluate_picks({STEM: picks}, ref, methods=("match",), radius=54, flip_y=4096)[-1]
        print(f"| {name} | {row['n_picks']} | {row['precision']:.3f} | {row['recall']:.3f} | {threads} | {load()} |")

    score("crYOLO alone", data.picks[STEM]["crYOLO"])
    score(f"blob (ours) alone, {seconds:.1f} s", ours)
    three = PickerData(data.pickers, {STEM: data.picks[STEM]})
    for m in (2, 3):
        score(f"consensus {m}-of-3 (crYOLO, DeepPicker, Topaz)", run_consensus(three, box_size=180, min_pickers=m)[0].picks)
    four = PickerData([*data.pickers, "blob"], {STEM: {**data.picks[STEM], "blob": ours}})
    for m in (2, 3, 4):
        score(f"consensus {m}-of-4 (+ blob)", run_consensus(four, box_size=180, min_pickers=m)[0].picks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--particles", type=int, default=150)
    p.add_argument("--snr", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--min-pickers", type=int, default=2)
    p.add_argument("--n-val", type=int, default=3)
    p.add_argument("--train-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real-threshold", type=float, default=2.0)
    p.add_argument("--upper", type=float, default=6.0, help="blob upper_threshold (junk rejection), sigmas")
    p.add_argument("--skip-simulated", action="store_true")
    args = p.parse_args()
    print(f"threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), load {load()}")
    real(args)
    if not args.skip_simulated:
        simulated(args)


if __name__ == "__main__":
    main()
