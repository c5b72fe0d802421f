"""The frame every command runs in: Hydra composition, the run directory, and error reporting.

A command module defines ``main`` with :func:`hydra_command`::

    @hydra_command("simulate")            # composes configs/simulate.yaml
    def main(cfg: DictConfig, run_dir: Path) -> None: ...

The frame creates ``run_dir`` (``out_dir`` of the root config), writes ``config.yaml`` (the
resolved config) and ``run_info.yaml`` (package version, command line, start time) into it, then
calls the command. Bad input — a ``ValueError`` (which :class:`~ackmeans_torch.errors.InputError`
is) or an ``OSError`` raised by the command, or a config Hydra cannot compose — ends the run with
one line on stderr and exit code 2; set ``ACKMEANS_DEBUG=1`` for the traceback. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import datetime
import functools
import io
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ackmeans_torch import __version__
from ackmeans_torch.io.atomic import atomic_output

# configs/ sits at the repository top level (lightning-hydra-template layout); the package is
# installed editable, so the path relative to this file is stable.
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = str(REPO_ROOT / "configs")
EXIT_BAD_INPUT = 2

# ${repo:path} in a config: a path relative to the repository root, whatever the working
# directory (the shared data beside the repository, ../shared/data, is named this way).
OmegaConf.register_new_resolver("repo", lambda path: str((REPO_ROOT / path).resolve()),
                                replace=True)

Command = Callable[[DictConfig, Path], None]


def _debug() -> bool:
    return os.environ.get("ACKMEANS_DEBUG", "") not in ("", "0")


def fail(message: str) -> None:
    """End the process with one line on stderr and the bad-input exit code."""
    print(f"ackmeans-torch: error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def _write_run_record(cfg: DictConfig, run_dir: Path) -> None:
    with atomic_output(run_dir / "config.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "version": __version__,
        # cli.main presents "ackmeans-torch <command>" as the program name (argv[0]).
        "command": " ".join([sys.argv[0], shlex.join(sys.argv[1:])]).strip(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "cwd": os.getcwd(),
    }
    with atomic_output(run_dir / "run_info.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(info)))


def hydra_command(config_name: str) -> Callable[[Command], Callable[[], None]]:
    """Turn ``command(cfg, run_dir)`` into a console entry point composed from
    ``configs/<config_name>.yaml``."""

    def decorate(command: Command) -> Callable[[], None]:
        started = False

        real_stderr = sys.stderr

        @hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base="1.3")
        def task(cfg: DictConfig) -> None:
            nonlocal started
            started = True
            sys.stderr = real_stderr
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                # under a multi-process launch only rank zero keeps the record (another rank's
                # argv is the launcher's re-execution, not what the user typed)
                if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:
                    _write_run_record(cfg, run_dir)
                command(cfg, run_dir)
            except (ValueError, OSError) as exc:
                if _debug():
                    raise
                fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

        @functools.wraps(command)
        def entry() -> None:
            # Hydra reports a config it cannot compose (unknown key, bad override, missing file)
            # on several stderr lines and exits 1 before the command starts. That is bad input:
            # hold stderr until the command starts, then say it in one line with exit code 2.
            held = io.StringIO()
            sys.stderr = held
            try:
                task()
            except SystemExit as exc:
                sys.stderr = real_stderr
                if exc.code == 1 and not started and not _debug():
                    lines = [ln.strip() for ln in held.getvalue().splitlines()]
                    lines = [ln for ln in lines if ln and "HYDRA_FULL_ERROR" not in ln]
                    fail("config: " + " | ".join(lines[:3]))
                raise
            finally:
                sys.stderr = real_stderr
                if not started:
                    real_stderr.write(held.getvalue() if _debug() else "")

        return entry

    return decorate
