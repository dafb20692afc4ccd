"""Parses Prometheus text expositions with prometheus_client's own parser.

Usage: metrics_parse.py FILE...

Each FILE holds one node's /metrics body. Every line must parse
(prometheus_client.parser.text_string_to_metric_families raises on one that does not), and
every sample line must come out as a sample (none silently dropped). Prints one JSON object
on stdout: {FILE: [[name, {label: value}, value], ...]}; exits non-zero on any failure.
Driven by crates/cli/tests/metrics.rs.
"""

import json
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


def main():
    out = {}
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            out[path] = parse(text)
        except Exception as e:  # noqa: BLE001 - reported with the file it came from
            raise SystemExit(f"{path}: {type(e).__name__}: {e}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
