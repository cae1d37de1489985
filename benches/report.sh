#!/usr/bin/env bash
# Runs the local benchmarks and prints the BENCHMARKS.md table: medians
# (criterion's estimate with its 95% interval) and the ratio of Manta to the
# raw-ractor anchor measured in the same run.
#   bash benches/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench actors --bench supervision >&2
dir="${CARGO_TARGET_DIR:-target}/criterion"
python3 - "$dir" <<'PY'
import json, sys, os
d = sys.argv[1]
def med(name):
    e = json.load(open(os.path.join(d, name, "new", "estimates.json")))["median"]
    return e["point_estimate"], e["confidence_interval"]["lower_bound"], e["confidence_interval"]["upper_bound"]
def us(ns): return f"{ns/1000:.2f} µs"
rows = []
for group, per in (("tell", 1000), ("ask", 1)):
    r, m = med(f"{group}/ractor"), med(f"{group}/manta")
    rows.append((group, per, r, m))
print("| measure | ractor median (95% CI) | manta median (95% CI) | manta / ractor |")
print("|---|---|---|---|")
for group, per, r, m in rows:
    label = "tell, per message (batch of 1,000 + 1 ask)" if group == "tell" else "ask round trip"
    print(f"| {label} | {us(r[0]/per)} ({us(r[1]/per)}–{us(r[2]/per)}) | {us(m[0]/per)} ({us(m[1]/per)}–{us(m[2]/per)}) | {m[0]/r[0]:.2f}x |")
s = med("supervision_failure_to_replacement_running")
print()
print("| measure | median (95% CI) | target |")
print("|---|---|---|")
print(f"| child failure → replacement running | {us(s[0])} ({us(s[1])}–{us(s[2])}) | < 50 µs |")
PY
