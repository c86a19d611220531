"""``endcap monitor report``: an HTML page of charts from what a serving Endcap recorded."""

from __future__ import annotations

import argparse
from pathlib import Path

from endcap.cli.commands import CommandTable, say
from endcap.workspace import Workspace


def cmd_monitor(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.monitoring.report import write_report

    page = write_report(workspace.root, Path(args.out))
    say(f"wrote {page} (open it in a browser)")
    return 0


def add_commands(commands: CommandTable) -> None:
    monitor = commands.add("monitor", cmd_monitor, "reports on what a serving Endcap recorded")
    monitor_commands = monitor.add_subparsers(dest="monitor_command", metavar="report", required=True)
    report = monitor_commands.add_parser("report", parents=[commands.common], help="an HTML page of charts")
    report.add_argument("--out", required=True, help="directory for index.html and its charts")
