"""docs/grafana/eventbus.json shows only series eventbus.prometheus exports, and all of them."""

from __future__ import annotations

import json
import pathlib
import re

from prometheus_client import CollectorRegistry

from eventbus.prometheus import BrokerCollector, PrometheusMetrics, WorkerCollector

DASHBOARD = pathlib.Path(__file__).resolve().parent.parent / "docs" / "grafana" / "eventbus.json"

#: The sample names of each metric type, from its family's name.
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def exported() -> dict[str, set[str]]:
    """Every sample name the library can export (from each family's name and type)."""
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    families = [*registry.collect(), *BrokerCollector._families(), *WorkerCollector._families()]
    names: dict[str, set[str]] = {}
    for family in families:
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = set()
    return names


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_series_the_dashboard_queries_is_exported() -> None:
    names = exported()
    used = {name for expr in expressions() for name in re.findall(r"\beventbus_\w+", expr)}
    assert used, "the dashboard queries nothing"
    assert used <= set(names), f"not exported: {sorted(used - set(names))}"


def test_every_exported_metric_has_a_panel() -> None:
    used = " ".join(expressions())
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in exported()}
    missing = sorted(family for family in families if family not in used)
    assert missing == []


def test_the_dashboard_groups_only_by_labels_the_series_have() -> None:
    known = {"event_type", "handler", "outcome", "namespace", "le", "instance"}  # instance: its
    for expr in expressions():
        for group in re.findall(r"by \(([^)]*)\)", expr):
            labels = {label.strip() for label in group.split(",")}
            assert labels <= known, expr
