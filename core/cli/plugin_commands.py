"""``endcap plugins`` (what is loaded, and what is installed but not enabled) and ``endcap plugins new``."""

from __future__ import annotations

import argparse
from pathlib import Path

from endcap.cli.commands import CommandTable, load_host, say
from endcap.workspace import Workspace


def cmd_plugins(args: argparse.Namespace, workspace: Workspace) -> int:
    if getattr(args, "plugins_command", None) == "new":
        from endcap.cli.scaffold import scaffold

        root = scaffold(args.name, args.kind, Path(args.dir))
        say(f"wrote {root}")
        say(f"next: cd {root} && pip install -e . && pytest")
        return 0
    _, host = load_host(workspace)
    for info in host.plugins:
        if info.name == "endcap.core":
            continue
        types = ", ".join(f"{t.kind}:{t.type_name}" for t in host.types_of(info.name)) or "-"
        say(f"{info.name} {info.version or '-'}  ({info.source})")
        say(f"    hooks: {', '.join(info.hooks) or '-'}")
        say(f"    components: {types}")
    if args.all:
        for name, version, source in host.disabled_plugins():
            say(f"{name} {version or '-'}  ({source})  [installed, not enabled: add it to 'plugins' in endcap.yaml]")
            say(f"    hooks: {declared_hooks(source)}")
    return 0


def declared_hooks(source: str) -> str:
    """The hooks the module at entry-point value ``source`` implements (imported, not registered)."""
    from importlib.metadata import EntryPoint

    try:
        module = EntryPoint(name="", value=source, group="endcap").load()
    except Exception as exc:  # a broken package is listed, not fatal
        return f"- (does not import: {type(exc).__name__}: {exc})"
    names = sorted(n for n in dir(module) if n.startswith("endcap_") and hasattr(getattr(module, n), "endcap_impl"))
    return ", ".join(names) or "-"


def add_commands(commands: CommandTable) -> None:
    plugins = commands.add("plugins", cmd_plugins, "list the loaded plugins, their versions, hooks and component types")
    plugins.add_argument("--all", action="store_true", help="also list installed plugins that are not enabled")
    plugin_commands = plugins.add_subparsers(dest="plugins_command", metavar="new")
    new = plugin_commands.add_parser("new", help="write a new plugin package with passing tests")
    new.add_argument("name", help="plugin name: the entry point, endcap-NAME and endcap_NAME")
    new.add_argument(
        "--kind",
        default="candidates",
        help="one or more of candidates, ranker, filter, features, monitor, comma-separated (default: candidates)",
    )
    new.add_argument("--dir", default=".", help="where to create endcap-NAME (default: here)")
