"""Print a markdown table of classification runs from their summary.json files — e.g. the
subdirectories of `ackmeans-torch classify --multirun experiment=paper_fig1
objective=ack,kmeans,spider,eqk` — next to the settings that differ between them.

    python scripts/summarise_runs.py runs/classify/fig1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ackmeans_torch.cli.evaluate import run_label

COLUMNS = [("median_angle", "median within-class angle (°)", "{:.2f}"),
           ("frac_below_10", "pairs < 10°", "{:.3f}"), ("frac_below_20", "pairs < 20°", "{:.3f}"),
           ("size_cv", "size CV", "{:.3f}"), ("size_min", "min size", "{}"),
           ("size_max", "max size", "{}"), ("empty", "empty", "{}"), ("ari", "ARI", "{:.3f}"),
           ("nmi", "NMI", "{:.3f}"), ("iterations", "iterations", "{}"),
           ("seconds", "wall time (s)", "{:.0f}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="multirun folders or run folders")
    args = parser.parse_args()
    runs = sorted({p.parent for f in args.folders for p in f.glob("**/summary.json")})
    print("| run | " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        cells = [fmt.format(summary[key]) if key in summary else "-" for key, _, fmt in COLUMNS]
        print(f"| {run_label(run)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
