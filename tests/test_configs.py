"""Every config file composes, and every ``_target_`` in it instantiates with the file's keys
(the YAML mirrors the constructor): each group option of each command, and every experiment.
Data sources are checked by binding their keys to the target's signature instead of reading or
simulating images."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
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
    command = ("simulate" if experiment == "paper_sim" or experiment.startswith("hetero3d")
               else "classify")
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


@pytest.mark.parametrize("option", _options("picker"))
def test_every_picker_option_instantiates_in_pick_and_pipeline(option, tmp_path):
    """Each picker YAML mirrors its constructor: it instantiates inside `pick` (with the
    required keys given), and the loop settings build their options."""
    from ackmeans_torch.cli.pick import loop_options

    if option == "template_averages":
        from ackmeans_torch.io.mrc import write_stack

        write_stack(tmp_path / "avg.mrcs", torch.rand(3, 64, 64), 4.0)
        extra = [f"pickers.x.path={tmp_path / 'avg.mrcs'}"]
    else:  # the command picker's required keys
        extra = ["pickers.x.command='true {micrograph}'", "pickers.x.output='{out_dir}/a.box'"] \
            if option == "command" else []
    cfg = _compose("pick", ["micrographs=m/", "particle_diameter=50", f"+picker@pickers.x={option}", *extra])
    picker = instantiate(cfg.pickers.x)
    assert picker.particle_diameter == 50
    assert loop_options(cfg).rounds == cfg.rounds


def test_pipeline_config_instantiates():
    """Every object of the `pipeline` command (simulation, pickers, loop, extraction,
    classification, selection settings) is made from its default config."""
    from ackmeans_torch.cli.pick import loop_options, make_pickers

    pipe = _compose("pipeline", [])
    loop_options(pipe)
    assert set(make_pickers(pipe)) == {"blob", "template", "cnn"}
    for key in ("simulation", "extract", "classes", "preprocess", "pipeline", "objective", "align", "trainer"):
        instantiate(pipe[key])
