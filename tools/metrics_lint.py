"""Lint a Prometheus text exposition against the Prometheus naming conventions: the rules of
`promtool check metrics` (client_golang's promlint), approximately (its unit lists are longer
here, and a label in capitals is flagged too), over the exposition as prometheus_client's
parser reads it.

    python -m tools.metrics_lint http://127.0.0.1:9101/metrics    # a running service's metrics
    python -m tools.metrics_lint - < metrics.txt

Prints one line per problem, "<metric>: <what is wrong>", and exits 1 when there is any.
"""
from __future__ import annotations

import re
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

_SNAKE_CASE = re.compile(r"^[a-z_][a-z0-9_]*$")
_CAMEL_CASE = re.compile(r"[a-z][A-Z]")
# Units that are not the base unit, and the abbreviations of units (promlint's lists, in short).
_NON_BASE_UNITS = {"milliseconds": "seconds", "microseconds": "seconds", "nanoseconds": "seconds",
                   "minutes": "seconds", "hours": "seconds", "days": "seconds", "weeks": "seconds",
                   "kilobytes": "bytes", "megabytes": "bytes", "gigabytes": "bytes", "terabytes": "bytes",
                   "bits": "bytes", "percent": "ratio (0 to 1)"}
_ABBREVIATIONS = {"ms", "us", "ns", "sec", "secs", "min", "mins", "hr", "hrs", "kb", "mb", "gb", "b", "pct", "perc"}


def problems(exposition: str) -> list[str]:
    """What is wrong with each metric family of the exposition, sorted; empty when nothing is."""
    found: list[str] = []
    # The parser takes _total off a counter's name either way: whether it was there, the # TYPE
    # line says.
    for line in exposition.splitlines():
        parts = line.split()
        if parts[:2] == ["#", "TYPE"] and len(parts) == 4 and parts[3] == "counter" and not parts[2].endswith("_total"):
            found.append(f"{parts[2]}: counter metrics should have a _total suffix")
    for family in text_string_to_metric_families(exposition):
        name, kind = family.name, family.type
        exposed = f"{name}_total" if kind == "counter" else name      # the parser strips _total

        def problem(text: str, exposed: str = exposed) -> None:
            found.append(f"{exposed}: {text}")

        if not family.documentation.strip():
            problem("no help text")
        if _CAMEL_CASE.search(name):
            problem("metric names should be written in snake_case, not camelCase")
        elif not _SNAKE_CASE.match(name):
            problem("metric names should be lowercase letters, digits and underscores (a colon is for recording rules)")
        if kind in ("unknown", "untyped"):
            problem("no metric type (# TYPE)")
        words = name.split("_")
        if kind != "counter" and name.endswith("_total"):
            problem("non-counter metrics should not have a _total suffix")
        if kind not in ("histogram", "summary") and words[-1] in ("count", "sum", "bucket"):
            problem(f"non-histogram and non-summary metrics should not have a _{words[-1]} suffix")
        for word in words:
            if word in _NON_BASE_UNITS:
                problem(f"use base unit {_NON_BASE_UNITS[word]} instead of {word}")
            if word in _ABBREVIATIONS:
                problem(f"metric names should not contain the abbreviated unit {word!r}")
            if word == kind:
                problem(f"metric names should not contain the metric type {word!r}")
        labels = {label for sample in family.samples for label in sample.labels}
        for label in sorted(labels):
            if label.startswith("__"):
                problem(f"label {label!r}: names starting with __ are reserved")
            elif not _SNAKE_CASE.match(label):
                problem(f"label {label!r} should be written in snake_case")
        if kind != "histogram" and "le" in labels:
            problem("the label 'le' is reserved for histogram buckets")
        if kind != "summary" and "quantile" in labels:
            problem("the label 'quantile' is reserved for summary quantiles")
    return sorted(set(found))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    source = args[0]
    try:
        text = sys.stdin.read() if source == "-" else urllib.request.urlopen(source, timeout=10).read().decode()
        found = problems(text)
    except (OSError, ValueError) as exc:
        print(f"metrics_lint: cannot read {source}: {exc}", file=sys.stderr)
        return 2
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
