"""ConfigSource: where admin API tenant changes are saved, and that the saved file reads back the same."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mcs_edge import config as c
from mcs_edge.config_store import ConfigSource, dump_toml, replace_tenant_tables
from mcs_edge.errors import ConfigErrors

FILE = """\
# top comment
[edge]
state_dir = "{state}"   # where state lives

[[tenants]]
id = "rossi"
domains = ["rossi.example.com"]
backend_sip = "udp:10.1.0.10:5060"
[tenants.limits]
max_connections = 10

# listeners after the tenants
[listen]
admin = "127.0.0.1:0"
"""

VERDI = {
    "id": "verdi",
    "domains": ["verdi.example.com"],
    "backend_sip": "udp:10.1.0.20:5060",
    "shaping": {"rate": 5000},
}


def test_file_mode_rewrites_only_the_tenant_tables(tmp_path: Path) -> None:
    """Saving tenants into the config file keeps every other line and comment; the result validates."""
    conf = tmp_path / "edge.toml"
    conf.write_text(FILE.format(state=tmp_path / "s"))
    conf.chmod(0o640)
    src = ConfigSource(str(conf))
    tenants = [*src.tenants_raw(), VERDI]
    _data, cfg = src.with_tenants(tenants)
    assert [t.id for t in cfg.tenants] == ["rossi", "verdi"]
    src.save_tenants(tenants)
    text = conf.read_text()
    assert text.startswith("# top comment\n[edge]\n") and "# where state lives" in text
    assert "# listeners after the tenants\n[listen]" in text
    assert oct(conf.stat().st_mode & 0o777) == "0o640"
    loaded = src.load()
    assert [t.id for t in loaded.tenants] == ["rossi", "verdi"]
    assert loaded.tenants[0].limits.max_connections == 10 and loaded.tenants[1].shaping.rate == 5000
    assert loaded.listen.admin.port == 0


def test_invalid_change_is_refused_with_key_paths_and_nothing_written(tmp_path: Path) -> None:
    """A tenant with a bad backend is refused by the file's own validation, naming the key path."""
    conf = tmp_path / "edge.toml"
    conf.write_text(FILE.format(state=tmp_path / "s"))
    before = conf.read_text()
    src = ConfigSource(str(conf))
    with pytest.raises(ConfigErrors) as exc:
        src.with_tenants([*src.tenants_raw(), dict(VERDI, backend_sip="carrier-pigeon:1")])
    assert [e.path for e in exc.value.errors] == ["tenants[1].backend_sip"]
    assert conf.read_text() == before


def test_inline_tenant_array_falls_back_to_a_full_rewrite(tmp_path: Path) -> None:
    """A file that writes tenants inline cannot be edited table by table: it is rewritten from its content."""
    conf = tmp_path / "edge.toml"
    conf.write_text(
        'tenants = [{id = "rossi", domains = ["rossi.example.com"], backend_sip = "udp:10.0.0.1:5060"}]\n'
        f'[edge]\nstate_dir = "{tmp_path}"\n'
    )
    src = ConfigSource(str(conf))
    src.save_tenants([*src.tenants_raw(), VERDI])
    assert [t.id for t in src.load().tenants] == ["rossi", "verdi"]


def test_embedded_default_saves_to_a_state_file_that_replaces_its_tenants(tmp_path: Path) -> None:
    """Without --config, tenants go to state_dir/tenants.toml (0600), used at every start instead of the demo tenant."""
    state = tmp_path / "state"
    src = ConfigSource(None, str(state))
    assert [t.id for t in src.load().tenants] == ["demo"]
    tenants = [*src.tenants_raw(), VERDI]
    src.save_tenants(tenants)
    saved = state / "tenants.toml"
    assert oct(saved.stat().st_mode & 0o777) == "0o600"
    assert [t.id for t in ConfigSource(None, str(state)).load().tenants] == ["demo", "verdi"]
    src.save_tenants([VERDI])
    assert [t.id for t in src.load().tenants] == ["verdi"]
    assert src.load().listen.https.port == 8443  # the rest is still the embedded default


def test_dump_toml_round_trips_configuration_values() -> None:
    """The writer's output parses back to the same mapping (strings with quotes, nested tables, arrays)."""
    data = {
        "edge": {"name": 'we"ird\\name\n', "workers": 2, "drain_timeout": 1.5},
        "tenants": [VERDI, {"id": "x", "domains": [], "echo": True, "limits": {"max_connections": 3}}],
    }
    assert tomllib.loads(dump_toml(data)) == data
    text = replace_tenant_tables('[edge]\nworkers = 2\n[[tenants]]\nid = "a"\n', [])
    assert tomllib.loads(text) == {"edge": {"workers": 2}}


def test_embedded_config_equals_embedded_default(tmp_path: Path) -> None:
    """With no state file the source builds exactly config.embedded_default()."""
    assert ConfigSource(None, str(tmp_path)).load() == c.embedded_default(str(tmp_path))
