"""docs/grafana/eventbus.json shows only series eventbus.prometheus exports, and all of them."""

from __future__ import annotations

import collections
import json
import pathlib
import re
import typing as t

from prometheus_client import CollectorRegistry

from eventbus.prometheus import BrokerCollector, PrometheusMetrics, WorkerCollector

DASHBOARD = pathlib.Path(__file__).resolve().parent.parent / "docs" / "grafana" / "eventbus.json"

#: The sample names of each metric type, from its family's name.
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


class Broker:
    """What BrokerCollector reads of a RedisBroker."""

    def __init__(self) -> None:
        self.dead_letters: list[object] = []

    def groups(self) -> list[dict[str, t.Any]]:
        return [{"handler": "shop.ship", "pending": 0, "lag": 0, "consumers": 1}]


class Worker:
    """What WorkerCollector reads of a Worker."""

    def __init__(self) -> None:
        self.handled = 0
        self.reclaimed: collections.Counter[str] = collections.Counter()
        self.subscriptions: list[object] = []


def exported() -> dict[str, set[str]]:
    """Every sample name the library can export, with the labels of each."""
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    registry.register(BrokerCollector(t.cast(t.Any, Broker())))
    registry.register(WorkerCollector(t.cast(t.Any, Worker())))
    names: dict[str, set[str]] = {}
    for family in registry.collect():
        labels = {label for sample in family.samples for label in sample.labels}
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = labels
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
    known = {"event_type", "handler", "outcome", "le", "instance"}  # instance: Prometheus's
    for expr in expressions():
        for group in re.findall(r"by \(([^)]*)\)", expr):
            labels = {label.strip() for label in group.split(",")}
            assert labels <= known, expr
