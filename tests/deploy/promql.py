"""Metric names and label matchers used by PromQL expressions (Grafana macros substituted)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import promql_parser

# Grafana's range macros, then its template variables (inside label values, so any string does).
_MACROS = re.compile(r"\$__(rate_interval|interval|range)\b")


@dataclass(frozen=True)
class Selector:
    metric: str
    labels: frozenset[str]


def parse(expr: str) -> Any:
    """The expression's syntax tree; raises ValueError on a syntax error."""
    return promql_parser.parse(_MACROS.sub("5m", expr))


def selectors(expr: str) -> list[Selector]:
    """Every vector selector in `expr`: its metric name and the labels it matches on."""
    return list(_walk(parse(expr)))


def _walk(node: Any) -> Iterator[Selector]:
    if isinstance(node, promql_parser.VectorSelector):
        labels = frozenset(m.name for m in node.matchers.matchers if m.name != "__name__")
        yield Selector(node.name, labels)
    elif isinstance(node, promql_parser.MatrixSelector):
        yield from _walk(node.vector_selector)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from _walk(arg)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from _walk(node.expr)
        if node.param is not None:
            yield from _walk(node.param)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from _walk(node.lhs)
        yield from _walk(node.rhs)
    elif isinstance(
        node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)
    ):
        yield from _walk(node.expr)
    elif isinstance(node, (promql_parser.NumberLiteral, promql_parser.StringLiteral)):
        return
    else:
        raise TypeError(f"unexpected PromQL node {type(node).__name__}")


_LABEL_VALUES = re.compile(r"^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*(\w+)\s*\)$")


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a Grafana dashboard's panels (rows included)."""
    found: list[str] = []

    def visit(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            visit(panel.get("panels", []))

    visit(dashboard["panels"])
    return found


def dashboard_variables(dashboard: dict[str, Any]) -> list[Selector]:
    """The `label_values(metric, label)` queries of the dashboard's template variables."""
    out = []
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text.strip())
        assert match, f"variable {variable['name']}: unsupported query {text!r}"
        out.append(Selector(match.group(1), frozenset({match.group(2)})))
    return out
