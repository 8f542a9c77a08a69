"""contrib/: the Grafana dashboard and Prometheus alert rules name only metrics a running edge exports, and promtool accepts the rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.edge import config_text, tenant_toml
from helpers.pbx import Pbx
from helpers.twistd import TwistdEdge

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib" / "prometheus" / "mcs-edge-alerts.yml"
RULE_TESTS = ROOT / "contrib" / "prometheus" / "mcs-edge-alerts.test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "mcs-edge-dashboard.json"
PROMTOOL = shutil.which("promtool")
NAME = re.compile(r"\b((?:mcs_edge|process)_[a-z0-9_]+)")

needs_promtool = pytest.mark.requires_tool(
    "promtool", why="Debian package prometheus, scripts/install-test-deps"
)


def _exported(text: str) -> set[str]:
    """Every series name the exposition can hold: families (with histogram suffixes) and samples."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


@pytest.fixture(scope="module")
def metrics_text(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of `twistd mcs-edge` with two workers (the supervisor adds the worker families)."""
    tmp = tmp_path_factory.mktemp("edge")
    pbx = Pbx()
    edge = None
    try:
        text = config_text(tmp / "state", tenant_toml("rossi", pbx.port), "workers = 2\n")
        edge = TwistdEdge(tmp, text, timeout=90)  # two workers start slowly on a loaded machine
        with urllib.request.urlopen(f"http://127.0.0.1:{edge.admin}/metrics", timeout=30) as resp:
            yield resp.read().decode()
    finally:
        if edge is not None:
            edge.stop()
        pbx.close()


def test_every_alert_metric_is_exported(metrics_text: str) -> None:
    """Each metric the alert rules name is on /metrics of a running edge."""
    named = set(NAME.findall(RULES.read_text()))
    assert {
        "mcs_edge_certificate_expires_in_seconds",
        "mcs_edge_call_loss_ratio_sum",
        "mcs_edge_backend_up",
    } <= named
    missing = sorted(named - _exported(metrics_text))
    assert not missing, f"alert rules name metrics the edge does not export: {missing}"


def test_every_dashboard_metric_is_exported(metrics_text: str) -> None:
    """Each metric the Grafana dashboard queries is on /metrics of a running edge."""
    named = {n for e in _dashboard_exprs() for n in NAME.findall(e)}
    assert len(named) > 15
    missing = sorted(named - _exported(metrics_text))
    assert not missing, f"dashboard queries metrics the edge does not export: {missing}"


def test_name_check_can_fail(metrics_text: str) -> None:
    """A metric the edge does not have is reported (the checks above can fail)."""
    assert "mcs_edge_no_such_family" not in _exported(metrics_text)
    assert "mcs_edge_call_mos_bucket" in _exported(metrics_text)


@needs_promtool
def test_promtool_check_rules() -> None:
    """`promtool check rules` accepts the alert rules."""
    assert PROMTOOL is not None, "promtool missing (Debian package prometheus)"
    res = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    """`promtool test rules`: 5% loss fires the tenant media alert (1% does not), 10 days left fires the certificate alert."""
    assert PROMTOOL is not None, "promtool missing (Debian package prometheus)"
    res = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULE_TESTS.parent,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard_is_grafana_json() -> None:
    """The dashboard parses, has a tenant variable and unique panel ids."""
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "mcs-edge"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert any(v["name"] == "tenant" for v in dash["templating"]["list"])
