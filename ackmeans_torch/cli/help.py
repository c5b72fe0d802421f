"""``ackmeans-torch <command> --help``: a command's settings, read from its YAML files.

The page is made from the text of ``configs/<command>.yaml`` and the group files it names in its
``defaults`` list: each key with its default and its comment, the groups with their options and
the comment at the top of each option file, the required keys (``???``) and the examples of the
command module's docstring. Nothing here imports torch, Hydra or the command module, so the page
comes in well under a second.

The comments are the documentation, and a YAML loader drops them. ruamel.yaml keeps them but is
not installed with hydra-core/omegaconf (they use PyYAML), so the files are read line by line
here: the configs are plain block mappings of scalars (and the ``defaults`` list), which a
line reader covers; ``tests/test_cli_help.py`` checks it finds exactly the keys PyYAML loads.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
MISSING = "???"
# groups every command composes for the frame, not for the user to choose
_FRAME_GROUPS = ("hydra",)
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):(?:[ \t]+(?P<rest>.*))?$")
_ITEM_LINE = re.compile(r"^ *- +(?P<item>.*)$")
_WHOLE_INTERPOLATION = re.compile(r"^\$\{[^}]*\}$")


@dataclass(frozen=True)
class Entry:
    """One leaf key: its dotted name, its default as written, and its comment."""

    key: str
    default: str
    comment: str


@dataclass
class ConfigText:
    """What a config file says: the comment block at its top, its keys, and its ``defaults``
    list (``group`` -> option with the comment of that line; bare names are parent options)."""

    header: list[str] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    groups: list[tuple[str, str, str]] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    global_package: bool = False


def _split_comment(text: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment); a ``#`` inside quotes or not after a blank is
    part of the value."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip(), text[i + 1:].strip()
    return text.rstrip(), ""


def read_config(path: Path) -> ConfigText:
    """Parse one config file's text (module docstring)."""
    out = ConfigText()
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings the line is inside
    seen_key = False
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            text = stripped[1:].strip()
            if text.startswith("@package"):
                out.global_package = "_global_" in text
            elif not seen_key:
                out.header.append(text)
            continue
        item = _ITEM_LINE.match(line)
        if item:
            if stack and stack[-1][1] == "defaults":
                value, comment = _split_comment(item["item"])
                group, sep, option = value.partition(":")
                if not sep:
                    if value != "_self_":
                        out.parents.append(value.strip())
                elif not group.startswith("override "):
                    out.groups.append((group.strip(), option.strip(), comment))
            continue
        match = _KEY_LINE.match(line)
        if not match:
            continue
        seen_key = True
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, comment = _split_comment(match["rest"] or "")
        if not value:  # a mapping (or the defaults list) follows
            stack.append((indent, match["key"]))
            continue
        if match["key"] == "_target_" or _WHOLE_INTERPOLATION.match(value):
            continue  # the class behind a group, or wiring between groups: nothing to set
        out.entries.append(Entry(".".join([*(k for _, k in stack), match["key"]]), value, comment))
    return out


def _option_entries(group: str, option: str) -> list[Entry]:
    """The keys of ``group=option`` with their comments, its parent options' keys first."""
    text = read_config(CONFIG_DIR / group / f"{option}.yaml")
    merged: dict[str, Entry] = {}
    for parent in text.parents:
        for entry in _option_entries(group, parent):
            merged[entry.key] = entry
    for entry in text.entries:
        base = merged.get(entry.key)
        merged[entry.key] = Entry(entry.key, entry.default, entry.comment or
                                  (base.comment if base else ""))
    return list(merged.values())


def _first_sentence(lines: list[str]) -> str:
    """The first sentence of a header: up to a period before a capital (so "Fig. 1", "Eq. 1"
    and "E. coli" do not end it), before any example."""
    prose = []
    for line in lines:
        if re.match(r"(examples?:|ackmeans-torch )", line, re.IGNORECASE):
            break
        prose.append(line)
    text = " ".join(prose)
    end = re.search(r"\.(\s+(?=[A-Z])|$)", text)
    return text[: end.start() + 1] if end else text


def examples(module: str, limit: int = 3) -> list[str]:
    """The first ``limit`` command lines under ``Examples::`` in ``module``'s docstring, read
    from its source (importing it would import torch)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return []
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    found, inside = [], False
    for line in doc.splitlines():
        if line.rstrip().endswith("::"):
            inside = line.strip().lower().startswith("example")
        elif inside and line.startswith((" ", "\t")) and line.strip():
            found.append(line.strip())
        elif inside and line.strip():
            inside = False
    return found[:limit]


def _how_to_give(key: str, comment: str, hints: list[str]) -> str:
    """What to give for a required key: its comment when it shows how, else an example that
    sets it, else the comment."""
    if f"{key}=" in comment:
        return comment
    for hint in hints:
        token = next((t for t in hint.split() if t.startswith(f"{key}=")), None)
        if token:
            return f"e.g. {token}" + (f"  ({comment})" if comment else "")
    return comment or f"give {key}=<value>"


def _rows(rows: list[tuple[str, str]], width: int) -> list[str]:
    """Two columns, the second wrapped; a long first cell puts the text on the next line."""
    col = min(36, max((len(a) for a, _ in rows), default=0) + 2)
    out = []
    for left, right in rows:
        wrapped = textwrap.wrap(right, max(30, width - col - 2)) or [""]
        if len(left) + 2 > col:
            out.append(f"  {left}")
            out.extend(f"  {'':<{col}}{part}" for part in wrapped if part)
        else:
            out.append(f"  {left:<{col}}{wrapped[0]}".rstrip())
            out.extend(f"  {'':<{col}}{part}" for part in wrapped[1:])
    return out


def _chosen(args: list[str]) -> dict[str, str]:
    """``group=option`` overrides given with ``--help``: their keys are shown instead."""
    return dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))


def command_help(name: str, module: str, summary: str, args: list[str] = ()) -> str:
    """The help page of command ``name`` (module docstring)."""
    width = min(110, shutil.get_terminal_size((100, 24)).columns)
    root_path = CONFIG_DIR / f"{name}.yaml"
    lines = [f"ackmeans-torch {name}: {summary}", "",
             f"usage: ackmeans-torch {name} [--multirun] [--cfg job] [key=value ...] "
             "[group=option ...]"]
    shown = examples(module)
    if not root_path.is_file():
        return "\n".join(lines + ["", "Examples:", *(f"  {e}" for e in shown)])
    root = read_config(root_path)
    description = " ".join(ln for ln in root.header if not ln.lower().startswith("example"))
    description = description.removeprefix(f"ackmeans-torch {name}:").strip()
    if description:
        lines += ["", *textwrap.wrap(description[:1].upper() + description[1:], width)]
    chosen = _chosen(list(args))
    groups = [(g, chosen.get(g, option), comment) for g, option, comment in root.groups
              if g not in _FRAME_GROUPS]
    settings = list(root.entries)
    required: list[tuple[str, str]] = []
    group_rows: list[tuple[str, str]] = []
    hints = [*shown, *root.header]
    for group, option, comment in groups:
        folder = CONFIG_DIR / group
        options = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        group_rows.append((f"{group}=", f"default {option}" + (f"; {comment}" if comment else "")))
        for opt in options:
            text = read_config(folder / f"{opt}.yaml")
            needs = [f"{group}.{e.key}" for e in _option_entries(group, opt)
                     if e.default == MISSING]
            about = _first_sentence(text.header) + (f" Needs {', '.join(needs)}." if needs else "")
            mark = "*" if opt == option else " "
            group_rows.append((f" {mark} {opt}", about))
        if option in options and not read_config(folder / f"{option}.yaml").global_package:
            hints += read_config(folder / f"{option}.yaml").header
            settings += [Entry(f"{group}.{e.key}", e.default, e.comment)
                         for e in _option_entries(group, option)]
    for entry in settings:
        if entry.default == MISSING:
            required.append((entry.key, _how_to_give(entry.key, entry.comment, hints)))
    lines += ["", "Required:" if required else "Required: nothing (every key has a default)"]
    lines += _rows(required, width)
    lines += ["", "Settings (key=default; override with key=value):"]
    lines += _rows([(f"{e.key}={'REQUIRED' if e.default == MISSING else e.default}", e.comment)
                    for e in settings], width)
    if group_rows:
        lines += ["", "Groups (group=option; * = the option whose keys are listed above):"]
        lines += _rows(group_rows, width)
    if shown:
        lines += ["", "Examples:", *(f"  {e}" for e in shown)]
    lines += ["", *textwrap.wrap(
        "Hydra options go before the overrides: --cfg job prints the composed config, "
        "--multirun runs one job per value of a comma list (objective=ack,kmeans), "
        "--hydra-help lists Hydra's own. Quote a value with spaces: data.path='/a b/c.star'. "
        f"`ackmeans-torch {name} GROUP=OPTION --help` lists that option's keys. "
        "ACKMEANS_DEBUG=1 shows the traceback of an error.", width)]
    return "\n".join(lines)
