"""The ``endcap`` command line: the parser, assembled from each command module, and ``main``.

Heavy imports (Feast, implicit) happen inside the commands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from endcap.cli import (
    config_command,
    data_commands,
    evaluate_command,
    model_commands,
    monitor_command,
    plugin_commands,
    recommend_commands,
    serve_command,
)
from endcap.cli.commands import CommandTable
from endcap.errors import EndcapError, InputFileError
from endcap.workspace import Workspace

COMMAND_MODULES = (
    data_commands,
    model_commands,
    serve_command,
    recommend_commands,
    evaluate_command,
    monitor_command,
    plugin_commands,
    config_command,
)
"""Each adds its commands to the parser, in the order ``endcap --help`` lists them."""


def common_options() -> argparse.ArgumentParser:
    """The options every command takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--trace-hooks",
        action="store_true",
        help="log every plugin hook call with its duration (or set ENDCAP_TRACE_HOOKS=1)",
    )
    common.add_argument(
        "--workspace",
        default=None,
        help="workspace directory (default: $ENDCAP_WORKSPACE, else ./.endcap)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="endcap", description="Endcap: product-purchase recommendations over gRPC.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = CommandTable(subparsers, common_options())
    for module in COMMAND_MODULES:
        module.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from endcap.cli.arrow_memory import prefer_jemalloc
    from endcap.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging()
    prefer_jemalloc()
    if getattr(args, "trace_hooks", False):
        os.environ["ENDCAP_TRACE_HOOKS"] = "1"
    workspace = Workspace.resolve(args.workspace)
    try:
        return int(args.handler(args, workspace))
    except InputFileError as exc:
        print(f"endcap {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except EndcapError as exc:
        print(f"endcap {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
