"""The frame every command runs in: Hydra composition, the run directory, logging, and error
reporting.

A command module defines ``main`` with :func:`hydra_command`::

    @hydra_command("simulate")            # composes ackmeans_torch/configs/simulate.yaml
    def main(cfg: DictConfig, run_dir: Path) -> None: ...

The configs ship inside the package (``ackmeans_torch/configs``), so an installed wheel runs. The
frame writes ``config.yaml`` (the resolved config) and ``run_info.yaml`` (package version, command
line, Hydra overrides, start time) into ``run_dir`` (``out_dir`` of the root config), logs to the
terminal and to ``run_dir/app.log``, then calls the command.

Bad input ends the run with one line on stderr and exit code 2 (``ACKMEANS_DEBUG=1`` shows the
traceback): a ``ValueError`` (which :class:`~ackmeans_torch.errors.InputError` is) or an
``OSError`` raised by the command, also when Hydra's ``instantiate`` wraps it; a config that
cannot be composed, a missing mandatory value, or a keyword a ``_target_`` does not take. When the
run directory was new, everything the failed run wrote into it is removed (nothing half-written
stays). Ctrl-C ends with one line, "interrupted; resume with resume=true", and exit code 130. Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import datetime
import functools
import io
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ackmeans_torch import __version__
from ackmeans_torch.io.atomic import atomic_output

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"

Command = Callable[[DictConfig, Path], None]


def _debug() -> bool:
    return os.environ.get("ACKMEANS_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """End the process with one line on stderr and ``code`` (bad input: 2)."""
    print(f"ackmeans-torch: error: {message}", file=sys.stderr)
    sys.exit(code)


def _rank_zero() -> bool:
    # under a multi-process launch only rank zero keeps the record (another rank's argv is the
    # launcher's re-execution, not what the user typed)
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def _write_run_record(cfg: DictConfig, run_dir: Path) -> None:
    with atomic_output(run_dir / "config.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "version": __version__,
        # cli.main presents "ackmeans-torch <command>" as the program name (argv[0]).
        "command": " ".join([sys.argv[0], shlex.join(sys.argv[1:])]).strip(),
        "overrides": list(HydraConfig.get().overrides.task),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "cwd": os.getcwd(),
    }
    with atomic_output(run_dir / "run_info.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(info)))


def _start_logging(run_dir: Path | None) -> list[logging.Handler]:
    """INFO lines to stdout and, on rank zero, to ``run_dir/app.log``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if run_dir is not None:
        handlers.append(logging.FileHandler(run_dir / "app.log"))
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings reach the log as one line, not a source excerpt
    return handlers


def _stop_logging(handlers: list[logging.Handler]) -> None:
    root = logging.getLogger()
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()
    logging.captureWarnings(False)


def bad_input_message(exc: BaseException) -> str | None:
    """The one-line message for an exception that is the user's input, or None for a bug.

    Hydra's ``instantiate`` wraps what a ``_target_`` raised: the cause is what counts, and a
    ``TypeError`` there is a keyword the target does not take (a config typo)."""
    key = None
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        text = str(exc)
        key = text.rsplit("full_key:", 1)[1].strip() if "full_key:" in text else key
        exc = exc.__cause__
        if isinstance(exc, TypeError):
            return f"config {key or ''}: {exc}".replace("config : ", "config: ")
    if isinstance(exc, (ValueError, OSError, OmegaConfBaseException)):
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return f"config: {first}" if isinstance(exc, OmegaConfBaseException) else first
    return None


def _clean_up(run_dir: Path) -> None:
    """Remove what a failed run wrote into the run directory it created."""
    for entry in run_dir.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    run_dir.rmdir()


def hydra_command(config_name: str) -> Callable[[Command], Callable[[], None]]:
    """Turn ``command(cfg, run_dir)`` into a console entry point composed from
    ``configs/<config_name>.yaml``."""

    def decorate(command: Command) -> Callable[[], None]:
        # per call: whether the command started, and the stderr to report on
        state = {"started": False, "stderr": sys.stderr}

        @hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base="1.3")
        def task(cfg: DictConfig) -> None:
            state["started"] = True
            sys.stderr = state["stderr"]
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            handlers: list[logging.Handler] = []
            fresh = False
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                fresh = not any(run_dir.iterdir())
                if _rank_zero():
                    _write_run_record(cfg, run_dir)
                handlers = _start_logging(run_dir if _rank_zero() else None)
                command(cfg, run_dir)
            except KeyboardInterrupt:
                fail("interrupted; resume with resume=true", EXIT_INTERRUPTED)
            except Exception as exc:
                message = bad_input_message(exc)
                if message is None or _debug():
                    raise
                _stop_logging(handlers)
                handlers = []
                if fresh and _rank_zero():
                    _clean_up(run_dir)
                fail(message)
            finally:
                _stop_logging(handlers)

        @functools.wraps(command)
        def entry() -> None:
            # Hydra reports a config it cannot compose (unknown key, bad override, missing file)
            # on several stderr lines and exits 1 before the command starts. That is bad input:
            # hold stderr until the command starts, then say it in one line with exit code 2.
            real_stderr = state["stderr"] = sys.stderr
            state["started"] = False
            held = io.StringIO()
            sys.stderr = held
            try:
                task()
            except SystemExit as exc:
                sys.stderr = real_stderr
                if exc.code == 1 and not state["started"] and not _debug():
                    lines = [ln.strip() for ln in held.getvalue().splitlines()]
                    lines = [ln for ln in lines if ln and "HYDRA_FULL_ERROR" not in ln]
                    if any(ln.startswith("Traceback") for ln in lines):
                        # Hydra failed outside composition (e.g. making the run directory):
                        # its last line is the error, with the path and errno
                        fail(lines[-1])
                    fail("config: " + " | ".join(lines[:3]))
                raise
            finally:
                sys.stderr = real_stderr
                if not state["started"]:
                    real_stderr.write(held.getvalue() if _debug() else "")

        return entry

    return decorate
