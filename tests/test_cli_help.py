"""``ackmeans-torch <command> --help``: made from the YAML text (keys, defaults, comments, groups,
required keys, examples), in this process, without Hydra or torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from ackmeans_torch.cli.help import CONFIG_DIR, read_config
from ackmeans_torch.cli.main import COMMANDS, main


def help_page(capsys, *args: str) -> str:
    main(list(args))
    return capsys.readouterr().out


def _leaves(node, prefix=""):
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, f"{name}.")
        elif key != "_target_" and not (isinstance(value, str) and value.startswith("${")
                                        and value.endswith("}")):
            yield name


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: p.stem)
def test_line_reader_finds_exactly_the_keys_yaml_loads(path):
    """The comment-keeping reader and PyYAML agree on every config file's keys."""
    loaded = yaml.safe_load(path.read_text()) or {}
    loaded.pop("defaults", None)
    assert [e.key for e in read_config(path).entries] == list(_leaves(loaded))


def test_classify_help_lists_keys_defaults_comments_groups_and_examples(capsys):
    out = help_page(capsys, "classify", "--help")
    assert out.startswith(f"ackmeans-torch classify: {COMMANDS['classify'][1]}")
    assert "usage: ackmeans-torch classify" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("sigma0=0.05"))
    assert "stop when the fraction of changed memberships" in line
    assert "preprocess.box_size=null" in out and "align.n_angles=128" in out
    assert "objective=" in out and "Plain K-means: no size term" in out  # an option's header
    assert "msa_mra" in out and "rfa" in out
    assert "Examples:" in out and "ackmeans-torch classify data=file data.path=" in out
    assert "Required: nothing" in out
    # only this command's groups, none of Hydra's stock page
    assert "evaluate=" not in out and "pickers" not in out and "Hydra" in out
    assert "powered by Hydra" not in out and "_target_=" not in out


def test_required_keys_say_what_to_give(capsys):
    out = help_page(capsys, "consensus", "--help")
    required = out.split("Required:")[1].split("Settings")[0]
    assert "pickers" in required and "pickers='[crYOLO/," in required
    assert "pickers=REQUIRED" in out and "???" not in out
    out = help_page(capsys, "classify", "data=file", "--help")
    required = out.split("Required:")[1].split("Settings")[0]
    assert "data.path=/path/to/particles.star" in required
    out = help_page(capsys, "evaluate", "--help")
    assert "e.g. evaluate.runs='[" in out.split("Required:")[1].split("Settings")[0]


def test_help_subcommand_is_the_same_page(capsys):
    assert help_page(capsys, "help", "simulate") == help_page(capsys, "simulate", "--help")


def test_help_is_fast_and_imports_neither_torch_nor_hydra():
    code = ("import sys, time; t = time.perf_counter(); from ackmeans_torch.cli.main import main; "
            "[main([c, '--help']) for c in ('classify', 'consensus', 'simulate', 'evaluate')]; "
            "print('SECONDS', time.perf_counter() - t); "
            "print('HEAVY', sorted(m for m in ('torch', 'hydra', 'omegaconf') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = dict(ln.split(" ", 1) for ln in out.stdout.splitlines()
                 if ln.startswith(("SECONDS", "HEAVY")))
    assert float(lines["SECONDS"]) < 1.0 and lines["HEAVY"] == "[]"


def test_hydra_cfg_job_still_reaches_hydra(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["ackmeans-torch", "simulate", "--cfg", "job"])
    main(["simulate", "--cfg", "job", f"out_dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert "n_centres: 20" in out and not (tmp_path / "run").exists()
