"""``ackmeans-torch <command> [key=value ...]``: the one console script.

Each command is a Hydra app composed from ``configs/<command>.yaml``; ``ackmeans-torch <command>
--help`` shows its config and the overrides it takes.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line summary); the module's ``main`` is a hydra_command.
COMMANDS = {
    "simulate": ("ackmeans_torch.cli.simulate", "simulate particle images with known poses, CTF and noise"),
    "classify": ("ackmeans_torch.cli.classify", "2D classification (MRA, MSA/MRA, RFA) with ACK-means or its baselines"),
    "consensus": ("ackmeans_torch.cli.consensus", "consensus particle picking over several pickers (REPIC)"),
    "evaluate": ("ackmeans_torch.cli.evaluate", "score classifications or picks against a reference"),
}

USAGE = "usage: ackmeans-torch <command> [--help] [--multirun] [key=value ...]"


def _help() -> str:
    width = max(len(name) for name in COMMANDS)
    rows = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())
    return (
        f"{USAGE}\n\nCommands:\n{rows}\n\n"
        "Config: Hydra overrides, e.g. `ackmeans-torch classify n_classes=50 objective=kmeans seed=3`;\n"
        "`ackmeans-torch <command> --help` shows a command's config."
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_help())
        return
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"ackmeans-torch: error: unknown command {name!r}; choose one of "
              f"{', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[name][0])
    # Hydra reads sys.argv: present the sub-command as the program.
    sys.argv = [f"ackmeans-torch {name}", *rest]
    module.main()


if __name__ == "__main__":
    main()
