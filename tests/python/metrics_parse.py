"""Parses Prometheus text expositions with prometheus_client's own parser.

Usage: metrics_parse.py [--dashboard DASHBOARD.json] FILE...

Each FILE holds one node's /metrics body. Every line must parse
(prometheus_client.parser.text_string_to_metric_families raises on one that does not), and
every sample line must come out as a sample (none silently dropped). Prints one JSON object
on stdout: {FILE: [[name, {label: value}, value], ...]}; exits non-zero on any failure.

With --dashboard, every metric name (runnel_*, process_*) in the Grafana dashboard's PromQL
expressions must also be the name of a sample in at least one FILE: the dashboard cannot
drift from what the nodes serve.
Driven by crates/cli/tests/metrics.rs.
"""

import json
import re
import sys

from prometheus_client.parser import text_string_to_metric_families


def parse(text):
    samples = []
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples.append([s.name, dict(s.labels), s.value])
    sample_lines = [l for l in text.splitlines() if l.strip() and not l.startswith("#")]
    if len(sample_lines) != len(samples):
        raise SystemExit(f"{len(sample_lines)} sample lines but {len(samples)} samples parsed")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            # The parser names a counter's family without its `_total`.
            family = name[:-6] if typ == "counter" and name.endswith("_total") else name
            if types.get(family) != typ:
                raise SystemExit(f"TYPE {name} {typ} parsed as {types.get(family)}")
    return samples


# A metric name in PromQL: Runnel's own and the standard process ones (functions, label
# names and values never start so).
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:\"])((?:runnel|process)_[A-Za-z0-9_:]*)")


def dashboard_metrics(path):
    """Every metric name in the PromQL of the dashboard's panel targets."""
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    names = set()
    exprs = 0

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            exprs += 1
            names.update(METRIC_NAME.findall(expr))
    if exprs == 0 or not names:
        raise SystemExit(f"{path}: no PromQL expressions with metric names found")
    return names


def main():
    args = sys.argv[1:]
    dashboard = None
    if args[:1] == ["--dashboard"]:
        dashboard, args = args[1], args[2:]
    out = {}
    for path in args:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            out[path] = parse(text)
        except Exception as e:  # noqa: BLE001 - reported with the file it came from
            raise SystemExit(f"{path}: {type(e).__name__}: {e}")
    if dashboard is not None:
        served = {s[0] for samples in out.values() for s in samples}
        missing = sorted(dashboard_metrics(dashboard) - served)
        if missing:
            raise SystemExit(f"{dashboard}: metrics no node serves: {', '.join(missing)}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
