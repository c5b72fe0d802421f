"""``ackmeans-torch <command> [key=value ...]``: the one console script.

Each command is a Hydra app composed from ``configs/<command>.yaml``; ``ackmeans-torch <command>
--help`` (or ``ackmeans-torch help <command>``) prints its settings, groups, required keys and
examples from the YAML comments (``cli/help.py``) without starting Hydra or importing torch; the
other Hydra options (``--cfg job``, ``--multirun``, ``--hydra-help``) go to Hydra.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line summary); the module's ``main`` is a hydra_command.
COMMANDS = {
    "simulate": ("ackmeans_torch.cli.simulate", "simulate particle images with known poses, CTF and noise"),
    "classify": ("ackmeans_torch.cli.classify", "2D classification (MRA, MSA/MRA, RFA) with ACK-means or its baselines"),
    "classify3d": ("ackmeans_torch.cli.classify3d", "3D classification of particles with known poses (hard or soft, any size rule)"),
    "consensus": ("ackmeans_torch.cli.consensus", "consensus particle picking over several pickers (REPIC)"),
    "evaluate": ("ackmeans_torch.cli.evaluate", "score classifications or picks against a reference"),
    "select": ("ackmeans_torch.cli.select", "keep or drop 2D classes of a classify run or RELION Class2D job"),
    "reproduce": ("ackmeans_torch.cli.reproduce", "run a classification R times: classes matched, stable members, stability"),
    "split": ("ackmeans_torch.cli.split", "classify until exhaustive with a calibrated test per split; flags continuous heterogeneity"),
    "simulate-micrographs": ("ackmeans_torch.cli.simulate_micrographs",
                             "simulate micrographs with true particle coordinates, CTF, ice, carbon and junk"),
    "extract": ("ackmeans_torch.cli.extract", "extract particles from micrographs at picked coordinates"),
    "pick": ("ackmeans_torch.cli.pick", "pick with several pickers and REPIC's pick -> consensus -> retrain loop"),
    "pipeline": ("ackmeans_torch.cli.pipeline",
                 "end to end: simulated micrographs -> pickers -> consensus -> extract -> 2D classes -> selection"),
}

USAGE = "usage: ackmeans-torch <command> [--help] [--multirun] [key=value ...]"


def _help() -> str:
    width = max(len(name) for name in COMMANDS)
    rows = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())
    return (
        f"{USAGE}\n\nCommands:\n{rows}\n\n"
        "Config: Hydra overrides, e.g. `ackmeans-torch classify n_classes=50 objective=kmeans seed=3`;\n"
        "`ackmeans-torch <command> --help` lists a command's settings, groups and examples."
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["help"] and len(args) > 1:
        args = [args[1], "--help", *args[2:]]
    if not args or args[0] in ("-h", "--help", "help"):
        print(_help())
        return
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"ackmeans-torch: error: unknown command {name!r}; choose one of "
              f"{', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    if "--help" in rest or "-h" in rest:
        from ackmeans_torch.cli.help import command_help

        print(command_help(name, *COMMANDS[name], rest))
        return
    module = importlib.import_module(COMMANDS[name][0])
    # Hydra reads sys.argv: present the sub-command as the program.
    sys.argv = [f"ackmeans-torch {name}", *rest]
    module.main()


if __name__ == "__main__":
    main()
