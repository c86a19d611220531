"""endcap.yaml adds to the defaults; `endcap config show` prints the result and where each value came from."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from endcap.config import BUILTIN_PLUGINS, EndcapConfig, load_config
from endcap.errors import ConfigError, PluginError
from endcap.plugin_host import PluginHost

DEFAULTS = EndcapConfig()


def write(tmp_path: Path, text: str) -> EndcapConfig:
    (tmp_path / "endcap.yaml").write_text(textwrap.dedent(text))
    return load_config(tmp_path)


def test_a_named_component_joins_the_defaults(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        candidates:
          recent: {type: popularity}
        monitors:
          audit: {type: structlog, sample_rate: 0.5}
        filters:
          recalled: {type: blocklist, item_ids: ["7"]}
        """,
    )
    assert list(config.candidates) == [*DEFAULTS.candidates, "recent"]
    assert list(config.monitors) == [*DEFAULTS.monitors, "audit"]
    assert config.monitors["audit"].settings() == {"sample_rate": 0.5}
    assert list(config.filters) == ["recalled"]
    components = PluginHost(config).build_components()
    assert set(components.candidates) == {*DEFAULTS.candidates, "recent"}
    assert set(components.monitors) == {*DEFAULTS.monitors, "audit"}


def test_defaults_are_replaced_dropped_or_cleared_only_when_asked(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        candidates:
          als: {type: als, factors: 8}
          tifuknn: null
        monitors:
          replace_defaults: true
          request_log: {type: structlog}
        """,
    )
    assert list(config.candidates) == [name for name in DEFAULTS.candidates if name != "tifuknn"]
    assert config.candidates["als"].settings() == {"factors": 8}
    assert list(config.monitors) == ["request_log"]
    assert list(write(tmp_path, "monitors: {replace_defaults: true}\n").monitors) == []


def test_listed_plugins_load_beside_the_built_in_ones(tmp_path: Path) -> None:
    config = write(tmp_path, "plugins: [structlog_monitor]\n")
    assert config.plugins == BUILTIN_PLUGINS
    loaded = {info.name for info in PluginHost(config).plugins}
    assert set(BUILTIN_PLUGINS) <= loaded
    with pytest.raises(PluginError, match="not_installed_anywhere"):
        PluginHost(write(tmp_path, "plugins: [not_installed_anywhere]\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plugins: popularity\n", "plugins: expected a list of plugin names"),
        ("candidates: [als]\n", "candidates: expected a mapping"),
        ("monitors: {replace_defaults: sometimes}\n", "monitors.replace_defaults: expected true or false"),
    ],
)
def test_malformed_sections_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        write(tmp_path, text)


def test_config_show_marks_every_value_with_its_origin(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        serving: {default_k: 20}
        candidates:
          recent: {type: popularity}
          tifuknn: null
        """,
    )
    shown = run_cli("config", "show", workspace=tmp_path).stdout
    lines = shown.splitlines()
    assert "  default_k: 20  # endcap.yaml" in lines
    assert "  max_k: 1000  # default" in lines
    assert "  recent: {type: popularity}  # endcap.yaml" in lines
    assert "  popularity: {type: popularity}  # default" in lines
    assert "  - drift  # built-in" in lines
    assert not any(line.strip().startswith("tifuknn:") for line in lines)
    # the listing is the effective configuration itself, as YAML
    assert yaml.safe_load(shown) == config.model_dump(mode="json", exclude={"source"})
