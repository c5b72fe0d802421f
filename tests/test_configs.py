"""Every config file composes, and every ``_target_`` in it instantiates with the file's keys
(the YAML mirrors the constructor): each group option of each command, and every experiment.
Data sources are checked by binding their keys to the target's signature instead of reading or
simulating images."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from ackmeans_torch.cli.app import CONFIG_DIR
from ackmeans_torch.cli.classify import classify_options

CONFIGS = Path(CONFIG_DIR)
COMMANDS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
CLASSIFY_GROUPS = ("objective", "pipeline", "align", "trainer", "sim", "data")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


def _check_data(node) -> None:
    """The data node's target exists and takes its keys."""
    target = get_object(node._target_)
    keys = {k: None for k in node if k != "_target_"}
    inspect.signature(target).bind(**keys)


def test_every_command_config_composes():
    assert set(COMMANDS) >= {"classify", "consensus", "evaluate", "simulate"}
    for name in COMMANDS:
        assert OmegaConf.to_container(_compose(name, []), resolve=False)


@pytest.mark.parametrize("group", CLASSIFY_GROUPS)
def test_every_classify_group_option_instantiates(group):
    for option in _options(group):
        overrides = [f"{group}={option}"] + (["data.path=x.star"] if option == "file" else [])
        cfg = _compose("classify", overrides)
        classify_options(cfg)  # every option object of the run, validated
        instantiate(cfg.sim)
        _check_data(cfg.data)


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes_and_instantiates(experiment):
    command = "simulate" if experiment == "paper_sim" else "classify"
    cfg = _compose(command, [f"experiment={experiment}"])
    instantiate(cfg.sim)
    if command == "classify":
        options = classify_options(cfg)
        assert options["options"].n_classes == cfg.n_classes
        _check_data(cfg.data)


def test_evaluate_options_compose():
    for option in _options("evaluate"):
        cfg = _compose("evaluate", [f"evaluate={option}"])
        assert cfg.evaluate.kind == option
