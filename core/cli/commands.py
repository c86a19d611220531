"""What every ``endcap`` command shares: how it is added to the parser, how it prints, and the
configuration and plugin host it loads once."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from endcap.workspace import Workspace

if TYPE_CHECKING:
    from endcap.config import EndcapConfig
    from endcap.plugin_host import PluginHost

Handler = Callable[[argparse.Namespace, Workspace], int]
"""A command: its parsed arguments and the workspace in, its exit status out."""


@dataclass(frozen=True)
class CommandTable:
    """The ``endcap`` sub-commands, with the options every one of them takes (``common``)."""

    subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
    common: argparse.ArgumentParser

    def add(self, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        """Add command ``name`` run by ``handler``; returns its parser for the command's own options."""
        sub = self.subparsers.add_parser(name, parents=[self.common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub


def positive_int(text: str) -> int:
    """An option's whole number of at least 1 (processes, threads); argparse names the option
    and the value when it is not one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def say(message: str) -> None:
    print(message, flush=True)


def limit_blas_threads() -> None:
    """implicit runs its own threads; BLAS threads on top of them only contend.

    The limit applies to BLAS libraries already loaded, so load SciPy's and implicit's first."""
    import implicit.cpu.als  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def load_host(workspace: Workspace) -> tuple[EndcapConfig, PluginHost]:
    """The workspace's ``endcap.yaml``, read once, and the plugin host built from it."""
    from endcap.config import load_config
    from endcap.plugin_host import PluginHost

    config = load_config(workspace.root)
    return config, PluginHost(config)
