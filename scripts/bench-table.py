#!/usr/bin/env python3
"""Print the markdown table of docs/BENCHMARKS.md from `glory sim --report` files.

Usage: scripts/bench-table.py docs/bench/hier-1k.json docs/bench/flat-1k.json ...
"""
import json
import sys


def fmt(v, unit="", digits=2):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def pct(p, key):
    return fmt(p.get(key) if p else None, " s")


ROWS = [
    ("enrollment: all nodes up", lambda r: fmt(r["enroll_seconds"], " s", 1)),
    ("enrollment: CPU seconds, masters / agents",
     lambda r: "n/a" if "enroll_cpu_seconds" not in r else
     f'{fmt(r["enroll_cpu_seconds"]["masters"], " s", 1)} / {fmt(r["enroll_cpu_seconds"]["agents"], " s", 1)}'),
    ("CPU stolen by the hypervisor: enrollment / steady",
     lambda r: "n/a" if "cpu_steal" not in r else
     f'{fmt(r["cpu_steal"]["enrollment"] and 100 * r["cpu_steal"]["enrollment"], "%", 0)} / '
     f'{fmt(r["cpu_steal"]["steady"] and 100 * r["cpu_steal"]["steady"], "%", 0)}'),
    ("detection p50", lambda r: pct(r["detection_seconds"], "p50")),
    ("detection p99", lambda r: pct(r["detection_seconds"], "p99")),
    ("detection max", lambda r: pct(r["detection_seconds"], "max")),
    ("missed detections", lambda r: fmt(r["missed_detections"])),
    ("false downs", lambda r: fmt(r["false_downs"])),
    ("group master failover (all up again)", lambda r: fmt(r["gm_failover_seconds"], " s")),
    ("nodes wrongly down in it", lambda r: fmt(r["gm_failover_wrong_downs"])),
    ("cluster master replaced (all up again)", lambda r: fmt(r["cm_failover_seconds"], " s")),
    ("partition: unreachable after / recovered after heal",
     lambda r: "n/a" if not r.get("partition") else
     f'{fmt(r["partition"]["unreachable_after_seconds"], " s")} / {fmt(r["partition"]["recovered_seconds"], " s")}'),
    ("heartbeats sent / received / lost",
     lambda r: f'{r["heartbeats"]["sent"]} / {r["heartbeats"]["received"]} / {r["heartbeats"]["lost"]}'),
    ("masters CPU at steady state", lambda r: fmt(r["masters_cpu_cores"], " cores")),
    ("masters CPU while listing all nodes every 2 s",
     lambda r: fmt(r.get("masters_cpu_cores_listing"), " cores")),
    ("agents CPU at steady state", lambda r: fmt(r["agents_cpu_cores"], " cores")),
    ("masters RSS", lambda r: fmt(r["masters_rss_bytes"] and r["masters_rss_bytes"] / 2**20, " MiB", 0)),
    ("master memory per node", lambda r: fmt(r["master_bytes_per_node"] and r["master_bytes_per_node"] / 1024, " KiB", 1)),
    ("key master writes/s, steady", lambda r: fmt(r["keymaster_writes_per_sec"]["steady"], "", 1)),
    ("monitoring: samples stored/s",
     lambda r: fmt((r.get("monitoring") or {}).get("samples_per_sec"), "", 0)),
    ("monitoring: store growth per node-day",
     lambda r: fmt((r.get("monitoring") or {}).get("store_bytes_per_node_day") and
                   r["monitoring"]["store_bytes_per_node_day"] / 2**20, " MiB", 2)),
    ("monitoring: spiked nodes alerted / p50 / p99 latency",
     lambda r: "n/a" if not (r.get("monitoring") or {}).get("spiked_nodes") else
     f'{r["monitoring"]["alerted_nodes"]} of {r["monitoring"]["spiked_nodes"]} / '
     f'{pct(r["monitoring"]["alert_latency_seconds"], "p50")} / {pct(r["monitoring"]["alert_latency_seconds"], "p99")}'),
    ("key master writes/s, during faults", lambda r: fmt(r["keymaster_writes_per_sec"]["faults"], "", 1)),
    ("GET all nodes p50 / p99",
     lambda r: f'{fmt(r["api_list_nodes_ms"]["p50"], " ms", 0)} / {fmt(r["api_list_nodes_ms"]["p99"], " ms", 0)}'),
]


def main():
    reports = [(p, json.load(open(p))) for p in sys.argv[1:]]
    heads = [f'{r["mode"]} {r["nodes"]:,}' for _, r in reports]
    print("| figure | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(reports))
    for name, get in ROWS:
        print(f"| {name} | " + " | ".join(get(r) for _, r in reports) + " |")


if __name__ == "__main__":
    main()
