"""``endcap config show``: the effective configuration, each value marked with where it came from."""

from __future__ import annotations

import argparse
from typing import Any

import yaml
from endcap.cli.commands import CommandTable, say
from endcap.config import (
    BUILTIN_PLUGINS,
    COMPONENT_SECTIONS,
    CONFIG_FILE,
    EndcapConfig,
    load_config,
    read_config_file,
)
from endcap.workspace import Workspace

FROM_FILE = CONFIG_FILE
DEFAULT = "default"


def _flow(value: Any) -> str:
    """``value`` as one line of YAML."""
    text: str = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.strip().removesuffix("\n...").removesuffix("...").strip()


def _line(indent: int, key: str, value: Any, origin: str) -> str:
    return f"{'  ' * indent}{key}: {_flow(value)}  # {origin}"


def _section_lines(name: str, value: Any, given: Any) -> list[str]:
    """One section of the effective configuration: its leaves, each with its origin."""
    given_map = given if isinstance(given, dict) else {}
    if name == "plugins":
        listed = set(given) if isinstance(given, list) else set()
        return ["plugins:"] + [
            f"  - {plugin}  # {'built-in' if plugin in BUILTIN_PLUGINS and plugin not in listed else FROM_FILE}"
            for plugin in value
        ]
    if name in COMPONENT_SECTIONS:
        if not value:
            return [_line(0, name, {}, FROM_FILE if name in given_map or given is not None else DEFAULT)]
        return [f"{name}:"] + [
            _line(1, component, block, FROM_FILE if given_map.get(component) is not None else DEFAULT)
            for component, block in value.items()
        ]
    if isinstance(value, dict) and name != "ranker":
        return [f"{name}:"] + [
            _line(1, key, leaf, FROM_FILE if key in given_map else DEFAULT) for key, leaf in value.items()
        ]
    return [_line(0, name, value, FROM_FILE if given is not None else DEFAULT)]


def explain(config: EndcapConfig, raw: dict[str, Any]) -> str:
    """``config`` as YAML, every value followed by ``# endcap.yaml`` or ``# default``."""
    effective = config.model_dump(mode="json", exclude={"source"})
    lines = [f"# effective configuration: {config.source} over the defaults"]
    for name, value in effective.items():
        lines += _section_lines(name, value, raw.get(name))
    return "\n".join(lines)


def cmd_config(args: argparse.Namespace, workspace: Workspace) -> int:
    config = load_config(workspace.root)
    path = workspace.root / CONFIG_FILE
    raw = read_config_file(path) if path.exists() else {}
    say(explain(config, raw))
    return 0


def add_commands(commands: CommandTable) -> None:
    config = commands.add("config", cmd_config, "show the effective configuration and where each value came from")
    actions = config.add_subparsers(dest="config_command", metavar="show", required=True)
    actions.add_parser(
        "show", parents=[commands.common], help="print endcap.yaml over the defaults, each value marked with its origin"
    )
