#!/usr/bin/env python3
"""Helpers for scripts/ganglia-bench.sh (Python 3 standard library only).

Subcommands:
  feed        send spoofed Ganglia 3.x gmetric packets (XDR over UDP) to a gmond
  check-xml   dump a gmond's (or gmetad's) XML over TCP and summarise it
  rrd-sample  watch the live header of a sample of RRD files and count updates

The wire format follows Ganglia 3.x lib/gm_protocol.x:

  gmetadata_full (128):
    Ganglia_metric_id   { string host; string name; bool spoof; }
    Ganglia_metadata_message { string type; string name; string units;
                               u_int slope; u_int tmax; u_int dmax;
                               Ganglia_extra_data metadata<>; }
  gmetric_string (133) / gmetric_double (135):
    Ganglia_metric_id; string fmt; string str | double d;

XDR: every item is big-endian and padded to 4 bytes; a string is its u_int
length then its bytes, zero-padded; a variable array is its u_int count then
its items. A spoofed metric carries spoof = TRUE and host = "IP:hostname"
(gmond keys hosts by the IP part), and gmetric also puts SPOOF_HOST =
"IP:hostname" in the metadata's extra data; this feeder does the same.

Only ever sends to the address given with --addr, which must be a loopback
address (127.0.0.0/8).
"""
import argparse
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import time

GMETADATA_FULL = 128
GMETRIC_STRING = 133
GMETRIC_DOUBLE = 135
SLOPE_BOTH = 3

_U32 = struct.Struct(">I")
_DBL = struct.Struct(">d")


def xdr_u32(v):
    return _U32.pack(v)


def xdr_str(s):
    b = s.encode()
    return _U32.pack(len(b)) + b + b"\0" * ((4 - len(b) % 4) % 4)


def host_ident(i):
    """Spoof identity of host number i (0-based): ("IP:name", name).

    The IP is only a label inside the packet (gmond's hash key for the host);
    no traffic goes to it. 127.x keeps it obviously local."""
    n = i + 1
    ip = "127.%d.%d.%d" % (100 + (n >> 16), (n >> 8) & 255, n & 255)
    name = "bench-node-%05d" % i
    return "%s:%s" % (ip, name), name


def metric_name(j):
    return "bench_m%02d" % j


def metric_id(spoof, name):
    return xdr_str(spoof) + xdr_str(name) + xdr_u32(1)  # spoof = TRUE


def metadata_packet(spoof, name, vtype, units="", tmax=60, dmax=0, group="bench"):
    extra = [("SPOOF_HOST", spoof), ("GROUP", group)]
    p = xdr_u32(GMETADATA_FULL) + metric_id(spoof, name)
    p += xdr_str(vtype) + xdr_str(name) + xdr_str(units)
    p += xdr_u32(SLOPE_BOTH) + xdr_u32(tmax) + xdr_u32(dmax)
    p += xdr_u32(len(extra))
    for k, v in extra:
        p += xdr_str(k) + xdr_str(v)
    return p


def value_prefix(spoof, name, value_type):
    if value_type == "double":
        return xdr_u32(GMETRIC_DOUBLE) + metric_id(spoof, name) + xdr_str("%.3f")
    return xdr_u32(GMETRIC_STRING) + metric_id(spoof, name) + xdr_str("%s")


def check_loopback(addr):
    ip = socket.gethostbyname(addr)
    if not ip.startswith("127."):
        sys.exit("refusing to send to non-loopback address %s" % ip)
    return ip


# ---------------------------------------------------------------- feed
def cmd_feed(a):
    ip = check_loopback(a.addr)
    hosts = [h for h in range(a.hosts) if h % a.procs == a.index]
    names = [metric_name(j) for j in range(a.metrics)]
    meta, prefixes = [], []
    for h in hosts:
        spoof, _ = host_ident(h)
        for n in names:
            meta.append(metadata_packet(spoof, n, "double", dmax=a.metric_dmax))
            prefixes.append(value_prefix(spoof, n, a.value_type))
    n = len(prefixes)
    rate = n / a.interval  # values per second for this process
    meta_rate = a.meta_rate / a.procs if a.meta_rate > 0 else rate

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((ip, a.port))
    send = s.send

    st = {"values": 0, "meta": 0, "max_lag_s": 0.0, "phase": "meta",
          "t_values_start": None, "send_errors": 0}
    prog = open(a.progress, "a", buffering=1) if a.progress else None

    def snap(tag):
        if prog:
            t = os.times()
            prog.write("%s %.3f %d %d %.2f %.2f %.3f\n" % (
                tag, time.time(), st["values"], st["meta"], t.user, t.system,
                st["max_lag_s"]))

    stop = {"now": False}
    signal.signal(signal.SIGUSR1, lambda *_: snap("snap"))
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__("now", True))

    t_end = time.monotonic() + a.duration

    def paced(count, r, make, key, track_lag):
        """Send `count` packets built by make(k) at r packets/s, evenly."""
        t0 = time.monotonic()
        done = 0
        next_prog = t0 + 1.0
        while done < count and not stop["now"]:
            now = time.monotonic()
            if now >= t_end:
                stop["now"] = True
                break
            if now >= next_prog:
                snap("prog")
                next_prog = now + 1.0
            target = min(count, int((now - t0) * r) + 1)
            behind = target - done
            if behind <= 0:
                time.sleep(min(0.01, max(0.002, (done - (now - t0) * r) / r)))  # >= 2 ms: fewer wake-ups, bigger batches
                continue
            if track_lag:
                lag = behind / r
                if lag > st["max_lag_s"]:
                    st["max_lag_s"] = lag
            batch = behind if behind < 4096 else 4096
            for k in range(done, done + batch):
                try:
                    send(make(k))
                except OSError:
                    st["send_errors"] += 1
            done += batch
            st[key] += batch
        return done

    # metadata first (gmond keeps it; a value without metadata is not shown)
    for _ in range(a.meta_passes):
        paced(n, meta_rate, meta.__getitem__, "meta", False)
        if stop["now"]:
            break
    st["phase"] = "values"
    st["t_values_start"] = time.time()
    snap("values_start")

    pk = _DBL.pack
    if a.value_type == "double":
        def make(k):
            i = k % n
            return prefixes[i] + pk((k // n) % 1000 + i * 1e-4)
    else:
        def make(k):
            i = k % n
            return prefixes[i] + xdr_str("%.3f" % ((k // n) % 1000 + i * 1e-4))
    # values: an endless sequence of rounds, each round = every (host, metric) once
    paced(1 << 62, rate, make, "values", True)
    snap("end")
    t = os.times()
    out = {"index": a.index, "series": n, "target_rate": rate,
           "values_sent": st["values"], "meta_sent": st["meta"],
           "send_errors": st["send_errors"], "max_lag_s": round(st["max_lag_s"], 3),
           "cpu_user_s": t.user, "cpu_sys_s": t.system}
    if st["t_values_start"]:
        el = time.time() - st["t_values_start"]
        out["values_elapsed_s"] = round(el, 3)
        out["values_rate"] = round(st["values"] / el, 1) if el > 0 else 0
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------- check-xml
HOST_RE = re.compile(rb'<HOST NAME="([^"]*)"[^>]*?TN="(\d+)"')
METRIC_RE = re.compile(rb'<METRIC NAME="([^"]*)" VAL="([^"]*)"[^>]*?TN="(\d+)"')


def cmd_check_xml(a):
    ip = check_loopback(a.addr)
    t0 = time.time()
    c = socket.create_connection((ip, a.port), timeout=a.timeout)
    if a.query:
        c.sendall(a.query.encode() + b"\n")
    chunks = []
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        chunks.append(b)
    c.close()
    data = b"".join(chunks)
    t1 = time.time()
    hosts = 0
    bench_hosts = 0
    metrics = 0
    fresh = 0
    sample = []
    # walk host by host so that metrics are attributed to their host
    starts = [m.start() for m in re.finditer(rb"<HOST ", data)] + [len(data)]
    for hi in range(len(starts) - 1):
        chunk = data[starts[hi]:starts[hi + 1]]
        hm = HOST_RE.match(chunk)
        if not hm:
            continue
        hosts += 1
        if hm.group(1).startswith(b"bench-node-"):
            bench_hosts += 1
        for mm in METRIC_RE.finditer(chunk):
            metrics += 1
            if int(mm.group(3)) <= a.fresh_s:
                fresh += 1
            if len(sample) < 3:
                sample.append("%s/%s=%s TN=%s" % (hm.group(1).decode(), mm.group(1).decode(),
                                                  mm.group(2).decode(), mm.group(3).decode()))
    print(json.dumps({"xml_bytes": len(data), "fetch_s": round(t1 - t0, 3),
                      "hosts": hosts, "bench_hosts": bench_hosts, "metrics": metrics,
                      "metrics_fresh": fresh, "fresh_threshold_s": a.fresh_s,
                      "sample": sample}))


# ---------------------------------------------------------------- rrd-sample
def rrd_last_up(path):
    """Read live_head.last_up of an RRD file (rrdtool format 0003, x86_64 layout:
    stat_head 128 bytes, ds_def 120 bytes each, rra_def 120 bytes each)."""
    with open(path, "rb") as f:
        h = f.read(128)
        if h[:4] != b"RRD\0":
            return None
        ds_cnt, rra_cnt, step = struct.unpack_from("<QQQ", h, 24)
        f.seek(128 + 120 * ds_cnt + 120 * rra_cnt)
        last_up, usec = struct.unpack("<qq", f.read(16))
        return last_up


def rrd_describe(path):
    with open(path, "rb") as f:
        h = f.read(128)
        ds_cnt, rra_cnt, step = struct.unpack_from("<QQQ", h, 24)
        f.seek(128 + 120 * ds_cnt)
        rras = []
        for _ in range(rra_cnt):
            r = f.read(120)
            cf = r[:20].split(b"\0")[0].decode()
            rows, pdp = struct.unpack_from("<QQ", r, 24)
            rras.append({"cf": cf, "pdp_per_row": pdp, "rows": rows,
                         "resolution_s": pdp * step, "span_s": pdp * step * rows})
    return {"ds": ds_cnt, "step_s": step, "rras": rras, "bytes": os.path.getsize(path)}


def cmd_rrd_sample(a):
    files = []
    for root, dirs, fs in os.walk(a.dir):
        if "__SummaryInfo__" in root:
            continue
        files.extend(os.path.join(root, f) for f in fs if f.endswith(".rrd"))
    summ = []
    for root, dirs, fs in os.walk(a.dir):
        if root.endswith("__SummaryInfo__") and os.path.dirname(root) != a.dir.rstrip("/"):
            summ.extend(os.path.join(root, f) for f in fs if f.endswith(".rrd"))
    random.seed(1)
    pick = random.sample(files, min(a.count, len(files))) if files else []
    watch = pick + summ[:1]
    last = {p: rrd_last_up(p) for p in watch}
    updates = {p: 0 for p in watch}
    t0 = time.time()
    while time.time() - t0 < a.duration:
        time.sleep(a.period)
        for p in watch:
            try:
                v = rrd_last_up(p)
            except OSError:
                continue
            if v != last[p]:
                updates[p] += 1
                last[p] = v
    el = time.time() - t0
    now = time.time()
    upd = [updates[p] for p in pick]
    out = {"window_s": round(el, 1), "host_rrd_files": len(files), "sampled": len(pick),
           "updates_per_file": round(sum(upd) / len(upd), 3) if upd else 0,
           "files_never_updated": sum(1 for u in upd if u == 0),
           "max_age_s_at_end": max((now - last[p] for p in pick if last[p]), default=None),
           "summary_updates": updates[summ[0]] if summ else None}
    if pick:
        out["describe"] = rrd_describe(pick[0])
    if summ:
        out["describe_summary"] = rrd_describe(summ[0])
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("feed")
    f.add_argument("--addr", default="127.0.0.1")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--hosts", type=int, default=10000)
    f.add_argument("--metrics", type=int, default=40)
    f.add_argument("--interval", type=float, default=5.0)
    f.add_argument("--duration", type=float, default=120.0, help="hard stop, seconds")
    f.add_argument("--procs", type=int, default=1, help="number of feeder processes")
    f.add_argument("--index", type=int, default=0, help="this process's index")
    f.add_argument("--meta-passes", type=int, default=2)
    f.add_argument("--meta-rate", type=float, default=0, help="metadata packets/s, all procs (0 = value rate)")
    f.add_argument("--metric-dmax", type=int, default=0)
    f.add_argument("--value-type", choices=["double", "string"], default="double")
    f.add_argument("--progress", help="append progress/snapshot lines here (SIGUSR1 = snapshot)")
    x = sub.add_parser("check-xml")
    x.add_argument("--addr", default="127.0.0.1")
    x.add_argument("--port", type=int, required=True)
    x.add_argument("--query", default="")
    x.add_argument("--fresh-s", type=int, default=15)
    x.add_argument("--timeout", type=float, default=120)
    r = sub.add_parser("rrd-sample")
    r.add_argument("--dir", required=True)
    r.add_argument("--count", type=int, default=300)
    r.add_argument("--duration", type=float, default=60)
    r.add_argument("--period", type=float, default=1.0)
    a = ap.parse_args()
    {"feed": cmd_feed, "check-xml": cmd_check_xml, "rrd-sample": cmd_rrd_sample}[a.cmd](a)


if __name__ == "__main__":
    main()
