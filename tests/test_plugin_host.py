from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import endcap
import pytest
from endcap.config import EndcapConfig, load_config
from endcap.errors import ConfigError, PluginError
from endcap.plugin_host import PluginHost
from endcap.plugins.popularity import PopularityCandidates


class Nothing(endcap.CandidateGenerator):
    def generate(self, query: Any, user: Any, n: int) -> endcap.Candidates:
        return endcap.Candidates.empty()


class MisspeltHook:
    @endcap.hookimpl
    def endcap_register_component(self, registry: Any) -> None:  # missing the final "s"
        registry.add(Nothing)


class WrongArgument:
    @endcap.hookimpl
    def endcap_register_components(self, registry: Any, extra: Any) -> None:
        registry.add(Nothing)


class Stealer:
    @endcap.hookimpl
    def endcap_register_components(self, registry: Any) -> None:
        registry.add(Nothing, type_name="popularity")


class Registers:
    @endcap.hookimpl
    def endcap_register_components(self, registry: Any) -> None:
        registry.add(Nothing, type_name="nothing")


def test_builtin_plugins_load_through_entry_points() -> None:
    host = PluginHost(EndcapConfig())
    names = {p.name for p in host.plugins}
    assert {"popularity", "repurchase", "tifuknn", "als", "item2item", "lightgbm_ranker", "linear_ranker"} <= names
    assert {"blocklist", "structlog_monitor"} <= names
    popularity = next(p for p in host.plugins if p.name == "popularity")
    assert popularity.version == "0.1.0"
    assert popularity.hooks == ("endcap_register_components",)
    assert host.registry.get("candidates", "popularity").cls is PopularityCandidates
    components = host.build_components()
    assert list(components.candidates) == ["popularity", "repurchase", "tifuknn", "als", "item2item"]
    assert components.ranker.name == "ranker" and type(components.ranker).__name__ == "LightGbmRanker"


def test_each_host_has_its_own_plugin_manager() -> None:
    first = PluginHost(EndcapConfig(), extra_plugins={"registers": Registers()})
    second = PluginHost(EndcapConfig())
    assert first.registry.get("candidates", "nothing") is not None
    assert second.registry.get("candidates", "nothing") is None


def test_misspelt_hook_is_refused_naming_the_plugin() -> None:
    with pytest.raises(PluginError, match=r"plugin 'typo'.*endcap_register_component"):
        PluginHost(EndcapConfig(), extra_plugins={"typo": MisspeltHook()})


def test_hook_with_unknown_argument_is_refused_naming_the_plugin() -> None:
    with pytest.raises(PluginError, match=r"(?s)plugin 'wrong'.*Argument\(s\) \{'extra'\}"):
        PluginHost(EndcapConfig(), extra_plugins={"wrong": WrongArgument()})


def test_type_name_collision_names_both_plugins() -> None:
    with pytest.raises(PluginError, match=r"plugin 'stealer'.*'popularity'.*already registered by plugin 'popularity'"):
        PluginHost(EndcapConfig(), extra_plugins={"stealer": Stealer()})


def test_enabled_plugin_that_is_not_installed_is_refused() -> None:
    with pytest.raises(PluginError, match=r"plugin 'nope' is enabled .* no installed package provides it"):
        PluginHost(EndcapConfig(plugins=("popularity", "nope")))


def test_plugin_that_fails_to_import_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "endcap_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: endcap-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[endcap]\nbroken = endcap_broken\n")
    (tmp_path / "endcap_broken.py").write_text("raise RuntimeError('missing licence key')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"plugin 'broken' \(endcap_broken\) failed to import: .*missing licence key"):
        PluginHost(EndcapConfig(plugins=("popularity", "broken")))


def write_config(tmp_path: Path, text: str) -> EndcapConfig:
    (tmp_path / "endcap.yaml").write_text(textwrap.dedent(text))
    return load_config(tmp_path)


def test_component_settings_are_validated_with_file_key_and_reason(tmp_path: Path) -> None:
    config = write_config(tmp_path, "candidates:\n  als: {type: als, factors: 8, factorz: 3}\n")
    with pytest.raises(ConfigError, match=r"endcap.yaml: candidates.als .*factorz: unknown key"):
        PluginHost(config).build_components()


def test_unknown_component_type_lists_the_allowed_ones(tmp_path: Path) -> None:
    config = write_config(tmp_path, "ranker: {type: xgboost}\n")
    with pytest.raises(ConfigError, match=r"ranker.type: unknown ranker type 'xgboost'; allowed: lightgbm, linear"):
        PluginHost(config).build_components()


def test_unknown_top_level_key_and_missing_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="servng: unknown key"):
        write_config(tmp_path, "servng: {}\n")
    monkeypatch.delenv("ENDCAP_TEST_K", raising=False)
    with pytest.raises(ConfigError, match=r"endcap.yaml:2: environment variable \$\{ENDCAP_TEST_K\} is not set"):
        write_config(tmp_path, "serving:\n  default_k: ${ENDCAP_TEST_K}\n")
    monkeypatch.setenv("ENDCAP_TEST_K", "7")
    assert write_config(tmp_path, "serving:\n  default_k: ${ENDCAP_TEST_K}\n").serving.default_k == 7


def test_components_can_be_named_by_dotted_path(tmp_path: Path) -> None:
    config = write_config(tmp_path, "candidates:\n  empty: {type: test_plugin_host.Nothing}\n")
    assert isinstance(PluginHost(config).build_components().candidates["empty"], Nothing)


def test_invalid_yaml_is_located(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"endcap.yaml:2:\d+: not valid YAML"):
        write_config(tmp_path, "serving:\n\tdefault_k: 3\n")
