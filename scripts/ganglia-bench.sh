#!/usr/bin/env bash
# ganglia-bench.sh — measure Ganglia 3.7 (gmond + gmetad) under the same load
# we measure our own monitoring with: H hosts x M metrics every I seconds.
#
# What it does
#   1. installs Debian's ganglia-monitor (gmond) and gmetad if missing, and
#      makes sure the packaged services are not left running;
#   2. starts its own gmond and gmetad with config files in a temp dir, on
#      loopback, non-default ports (gmond udp 18649 / tcp 18650, gmetad xml
#      18651 / interactive 18652; gmetad itself cannot bind to one address, it
#      listens on all and answers only trusted_hosts 127.0.0.1);
#   3. feeds gmond spoofed gmetric packets (XDR over UDP, byte-identical to
#      what `gmetric --spoof IP:host` sends) from scripts/ganglia-feed.py;
#   4. after warm-up (metadata sent, every host-metric RRD created) measures a
#      steady-state window: CPU of gmond, gmetad and the feeder(s) separately
#      (/proc/PID/stat utime+stime), RSS, UDP drops, RRD updates, RRD size;
#   5. prints a human summary and, as the last line, one JSON object.
#   Only 127.0.0.1 is ever sent to. Only PIDs this script started are killed.
#
# Usage
#   scripts/ganglia-bench.sh [--hosts N] [--metrics N] [--interval S]
#       [--duration S] [--measure S] [--poll S] [--feeders N]
#       [--rras "RRA:... RRA:..."] [--value-type double|string]
#       [--rcvbuf BYTES] [--warmup-max S] [--tmpdir DIR] [--keep]
#   Defaults: 10000 hosts x 40 metrics every 5 s (80,000 values/s), gmetad
#   polling every 15 s with gmetad's default RRAs, 1 feeder process.
#   --duration is the minimum run time of the value feed; the last --measure
#   seconds (default 60) are the measurement window. If gmetad has not yet
#   created all RRDs by then, warm-up is extended (up to --warmup-max).
#   Every option can also be given as an environment variable: HOSTS, METRICS,
#   INTERVAL, DURATION, MEASURE, POLL, FEEDERS, RRAS, VALUE_TYPE, RCVBUF,
#   WARMUP_MAX, BENCH_TMPDIR, KEEP=1.
set -euo pipefail

HOSTS=${HOSTS:-10000}
METRICS=${METRICS:-40}
INTERVAL=${INTERVAL:-5}
DURATION=${DURATION:-150}
MEASURE=${MEASURE:-60}
POLL=${POLL:-15}
FEEDERS=${FEEDERS:-1}
RRAS=${RRAS:-}
VALUE_TYPE=${VALUE_TYPE:-double}
RCVBUF=${RCVBUF:-}
WARMUP_MAX=${WARMUP_MAX:-1200}
BENCH_TMPDIR=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
KEEP=${KEEP:-0}
GMOND_UDP=18649 GMOND_TCP=18650 GMETAD_XML=18651 GMETAD_INT=18652

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --hosts) HOSTS=$2; shift 2;;
    --metrics) METRICS=$2; shift 2;;
    --interval) INTERVAL=$2; shift 2;;
    --duration) DURATION=$2; shift 2;;
    --measure) MEASURE=$2; shift 2;;
    --poll) POLL=$2; shift 2;;
    --feeders) FEEDERS=$2; shift 2;;
    --rras) RRAS=$2; shift 2;;
    --value-type) VALUE_TYPE=$2; shift 2;;
    --rcvbuf) RCVBUF=$2; shift 2;;
    --warmup-max) WARMUP_MAX=$2; shift 2;;
    --tmpdir) BENCH_TMPDIR=$2; shift 2;;
    --keep) KEEP=1; shift;;
    -h|--help) usage 0;;
    *) echo "unknown option: $1" >&2; usage 2;;
  esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FEED_PY="$HERE/ganglia-feed.py"
[ -f "$FEED_PY" ] || { echo "missing $FEED_PY" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ------------------------------------------------------------------ install
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
INSTALLED_NOW=0
if ! pkg_installed ganglia-monitor || ! pkg_installed gmetad; then
  log "installing ganglia-monitor gmetad"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends ganglia-monitor gmetad >/dev/null; then
    apt-get update >/dev/null
    apt-get install -y --no-install-recommends ganglia-monitor gmetad >/dev/null
  fi
  INSTALLED_NOW=1
fi
# The packaged services must not be left running. Debian may start them on
# install (systemd, or invoke-rc.d where policy-rc.d allows it). Stop them with
# their own init tools; only instances using the package's config are touched.
stop_packaged() {
  local svc
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    for svc in ganglia-monitor gmetad; do
      systemctl is-active --quiet "$svc" 2>/dev/null && { log "stopping packaged $svc (systemd)"; systemctl stop "$svc" || true; }
    done
  fi
  for svc in ganglia-monitor gmetad; do
    local pidf=/var/run/${svc/ganglia-monitor/gmond}.pid
    if [ -s "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
      log "stopping packaged $svc (pid $(cat "$pidf"))"
      "/etc/init.d/$svc" stop >/dev/null 2>&1 || kill "$(cat "$pidf")" 2>/dev/null || true
    fi
  done
}
stop_packaged
for p in $(pgrep -x gmond || true) $(pgrep -x gmetad || true); do
  if ! tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q ganglia-bench; then
    log "note: a gmond/gmetad not started by this script is running (pid $p): $(tr '\0' ' ' < /proc/$p/cmdline)"
  fi
done

for port in $GMOND_UDP $GMOND_TCP $GMETAD_XML $GMETAD_INT; do
  if ss -Hlntu 2>/dev/null | awk '{print $5}' | grep -qE "[:.]$port\$"; then
    echo "port $port already in use" >&2; exit 1
  fi
done

# ------------------------------------------------------------------ temp dir, cleanup
TMPD=$(mktemp -d "$BENCH_TMPDIR/ganglia-bench.XXXXXX")
RRD_DIR="$TMPD/rrds"; mkdir -p "$RRD_DIR"
PIDS=()      # every PID this script started
GMOND_PID= GMETAD_PID= FEED_PIDS=() SAMPLER_PID=
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 150); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ -n "$GMOND_PID" ]; then
    local st=0; wait "$GMOND_PID" 2>/dev/null || st=$?
    [ "$st" -gt 128 ] && log "note: gmond ended with signal $((st - 128)) after SIGTERM (shutdown), status $st"
  fi
  if [ "$KEEP" = 1 ]; then log "kept $TMPD"; else rm -rf "$TMPD"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ RRAs and disk check
DEFAULT_RRAS="RRA:AVERAGE:0.5:1:5856 RRA:AVERAGE:0.5:4:20160 RRA:AVERAGE:0.5:40:52704"  # gmetad 3.7 built-in
USED_RRAS=${RRAS:-$DEFAULT_RRAS}
ROWS=0; for r in $USED_RRAS; do ROWS=$((ROWS + ${r##*:})); done
NRRA=$(wc -w <<<"$USED_RRAS")
# rrd file ~ headers (~1 KB) + 8 bytes x rows x data sources (1 per host metric, 2 per summary)
EST_HOST_FILE=$((1024 + 8 * ROWS)); EST_SUM_FILE=$((1536 + 16 * ROWS))
EST_TOTAL=$((HOSTS * METRICS * EST_HOST_FILE + 2 * METRICS * EST_SUM_FILE))
AVAIL=$(( $(df -Pk "$RRD_DIR" | awk 'NR==2{print $4}') * 1024 ))
if [ $EST_TOTAL -gt $((AVAIL * 85 / 100)) ]; then
  echo "RRDs would need ~$((EST_TOTAL / 1024 / 1024)) MiB but only $((AVAIL / 1024 / 1024)) MiB are free under $BENCH_TMPDIR." >&2
  echo "Use fewer --hosts, or smaller --rras with the same number of archives, e.g." >&2
  echo "  --rras 'RRA:AVERAGE:0.5:1:244 RRA:AVERAGE:0.5:4:244 RRA:AVERAGE:0.5:40:244'" >&2
  exit 1
fi

# ------------------------------------------------------------------ configs
BUF_LINE=""; [ -n "$RCVBUF" ] && BUF_LINE="  buffer = $RCVBUF"
cat > "$TMPD/gmond.conf" <<EOF
/* ganglia-bench: gmond that only aggregates spoofed metrics (no own metrics) */
globals {
  daemonize = no
  setuid = no
  user = nobody
  debug_level = 0
  max_udp_msg_len = 1472
  mute = no
  deaf = no
  allow_extra_data = yes
  host_dmax = 8640000
  host_tmax = 20
  cleanup_threshold = 300
  gexec = no
  send_metadata_interval = 0
}
cluster {
  name = "bench"
  owner = "bench"
  latlong = "unspecified"
  url = "unspecified"
}
host {
  location = "unspecified"
}
udp_recv_channel {
  bind = 127.0.0.1
  port = $GMOND_UDP
$BUF_LINE
}
tcp_accept_channel {
  bind = 127.0.0.1
  port = $GMOND_TCP
}
EOF
RRA_LINE=""
if [ -n "$RRAS" ]; then RRA_LINE="RRAs"; for r in $RRAS; do RRA_LINE+=" \"$r\""; done; fi
cat > "$TMPD/gmetad.conf" <<EOF
# ganglia-bench gmetad
data_source "bench" $POLL 127.0.0.1:$GMOND_TCP
gridname "benchgrid"
authority "http://127.0.0.1/ganglia/"
trusted_hosts 127.0.0.1
setuid off
xml_port $GMETAD_XML
interactive_port $GMETAD_INT
server_threads 2
rrd_rootdir "$RRD_DIR"
$RRA_LINE
EOF

# ------------------------------------------------------------------ helpers
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }; s=${s##*) }; set -- $s; echo $(( ${12} + ${13} )); }
rss_kib() { awk -v k="$2" '$1==k":"{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
udp_sock_drops() {  # drops column of /proc/net/udp for our gmond socket
  local hex; hex=$(printf '%04X' "$GMOND_UDP")
  awk -v h=":$hex" 'substr($2, length($2)-4)==h {print $NF; exit}' /proc/net/udp
}
udp_rcvbuf_errors() { awk '/^Udp:/{n++; if(n==1){for(i=1;i<=NF;i++) if($i=="RcvbufErrors") c=i} else {print $c}}' /proc/net/snmp; }
sys_busy() { awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t-$5-$6, t}' /proc/stat; }
count_host_rrds() { find "$RRD_DIR" -name '*.rrd' -not -path '*__SummaryInfo__*' 2>/dev/null | wc -l; }
wait_port() { for _ in $(seq 100); do ss -Hlnt | awk '{print $4}' | grep -qE "[:.]$1\$" && return 0; sleep 0.1; done; return 1; }

# ------------------------------------------------------------------ start gmond, gmetad
log "tmpdir $TMPD; load: $HOSTS hosts x $METRICS metrics every ${INTERVAL}s = $(( HOSTS * METRICS / INTERVAL )) values/s; gmetad poll ${POLL}s; RRAs: $USED_RRAS"
gmond -f -c "$TMPD/gmond.conf" > "$TMPD/gmond.log" 2>&1 &
GMOND_PID=$!; PIDS+=("$GMOND_PID")
wait_port $GMOND_TCP || { cat "$TMPD/gmond.log" >&2; echo "gmond did not start" >&2; exit 1; }
# -d 1: foreground, error output only (gmetad's own meaning of debug level 1)
gmetad -d 1 -c "$TMPD/gmetad.conf" > "$TMPD/gmetad.log" 2>&1 &
GMETAD_PID=$!; PIDS+=("$GMETAD_PID")
wait_port $GMETAD_XML || { cat "$TMPD/gmetad.log" >&2; echo "gmetad did not start" >&2; exit 1; }
log "gmond pid $GMOND_PID, gmetad pid $GMETAD_PID"

DROPS0=$(udp_sock_drops); RCVERR0=$(udp_rcvbuf_errors)
T_START=$(date +%s)
FEED_DURATION=$(( WARMUP_MAX + DURATION + MEASURE + 600 ))  # hard bound; the script stops it earlier
for i in $(seq 0 $((FEEDERS - 1))); do
  python3 "$FEED_PY" feed --addr 127.0.0.1 --port $GMOND_UDP --hosts "$HOSTS" --metrics "$METRICS" \
    --interval "$INTERVAL" --duration "$FEED_DURATION" --procs "$FEEDERS" --index "$i" \
    --value-type "$VALUE_TYPE" --progress "$TMPD/feed$i.prog" > "$TMPD/feed$i.out" 2> "$TMPD/feed$i.err" &
  FEED_PIDS+=($!); PIDS+=($!)
done
log "feeder pids ${FEED_PIDS[*]}"

# ------------------------------------------------------------------ warm-up
feed_values_started() { local i; for i in $(seq 0 $((FEEDERS - 1))); do grep -q '^values_start' "$TMPD/feed$i.prog" 2>/dev/null || return 1; done; }
alive_or_die() { local p; for p in "$GMOND_PID" "$GMETAD_PID" "${FEED_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || { echo "process $p died" >&2; tail -5 "$TMPD"/*.log "$TMPD"/*.err >&2; exit 1; }; done; }
EXPECTED=$(( HOSTS * METRICS ))
WARM_MIN=$(( DURATION > MEASURE ? DURATION - MEASURE : 0 ))
T_VALUES=; T_FULL=; WARMUP_COMPLETE=1; LAST_N=; T_LAST_CHANGE=$(date +%s)
while :; do
  sleep 5; alive_or_die
  now=$(date +%s)
  [ -z "$T_VALUES" ] && feed_values_started && { T_VALUES=$now; log "metadata sent; value feed started"; }
  n=$(count_host_rrds)
  [ -z "$T_FULL" ] && [ "$n" -ge "$EXPECTED" ] && { T_FULL=$now; log "all $EXPECTED host RRDs created"; }
  # Metadata lost to UDP drops in both metadata passes means a series never shows
  # up (gmond only lists metrics it has metadata for): accept >= 98% once the
  # count has stopped growing for two poll intervals.
  if [ "$n" != "${LAST_N:-}" ]; then LAST_N=$n; T_LAST_CHANGE=$now; fi
  if [ -z "$T_FULL" ] && [ "$n" -ge $((EXPECTED * 98 / 100)) ] && [ $((now - T_LAST_CHANGE)) -ge $((2 * POLL + 10)) ]; then
    T_FULL=$T_LAST_CHANGE; log "host RRDs stable at $n/$EXPECTED ($((EXPECTED - n)) series never got metadata through)"
  fi
  log "warm-up: $((now - T_START))s, host RRDs $n/$EXPECTED, gmond cpu $(( $(cpu_ticks $GMOND_PID) / CLK_TCK ))s, gmetad cpu $(( $(cpu_ticks $GMETAD_PID) / CLK_TCK ))s"
  if [ -n "$T_VALUES" ] && [ $((now - T_VALUES)) -ge "$WARM_MIN" ] && [ -n "$T_FULL" ] && [ $((now - T_FULL)) -ge $((2 * POLL)) ]; then break; fi
  if [ $((now - T_START)) -ge "$WARMUP_MAX" ]; then
    WARMUP_COMPLETE=0; log "warm-up limit ${WARMUP_MAX}s reached before all RRDs existed; measuring anyway"; break
  fi
done

# ------------------------------------------------------------------ measurement window
snapshot() {  # $1 = tag
  local p i
  echo "gmond $(cpu_ticks $GMOND_PID)" > "$TMPD/snap.$1"
  echo "gmetad $(cpu_ticks $GMETAD_PID)" >> "$TMPD/snap.$1"
  for i in "${!FEED_PIDS[@]}"; do
    p=${FEED_PIDS[$i]}; echo "feed$i $(cpu_ticks "$p")" >> "$TMPD/snap.$1"; kill -USR1 "$p" 2>/dev/null || true
  done
  echo "drops $(udp_sock_drops)" >> "$TMPD/snap.$1"
  echo "rcvbuferr $(udp_rcvbuf_errors)" >> "$TMPD/snap.$1"
  echo "sys $(sys_busy)" >> "$TMPD/snap.$1"
  echo "time $(date +%s.%N)" >> "$TMPD/snap.$1"
}
log "measuring for ${MEASURE}s"
python3 "$FEED_PY" rrd-sample --dir "$RRD_DIR" --count 300 --duration "$MEASURE" > "$TMPD/rrdsample.json" 2> "$TMPD/rrdsample.err" &
SAMPLER_PID=$!; PIDS+=("$SAMPLER_PID")
snapshot start
sleep "$MEASURE"
snapshot end
GMOND_RSS=$(rss_kib $GMOND_PID VmRSS); GMOND_HWM=$(rss_kib $GMOND_PID VmHWM)
GMETAD_RSS=$(rss_kib $GMETAD_PID VmRSS); GMETAD_HWM=$(rss_kib $GMETAD_PID VmHWM)
alive_or_die
wait "$SAMPLER_PID" || true
sleep 0.2  # let the feeders write their snapshot lines

# gmond's view (after the window: dumping ~100 MB of XML disturbs gmond)
python3 "$FEED_PY" check-xml --port $GMOND_TCP --fresh-s $(( ${INTERVAL%.*} * 2 + 1 )) > "$TMPD/xml.json" 2>"$TMPD/xml.err" || echo '{}' > "$TMPD/xml.json"
for p in "${FEED_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${FEED_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
DROPS_END=$(udp_sock_drops); RCVERR_END=$(udp_rcvbuf_errors)

RRD_BYTES=$(du -sb "$RRD_DIR" | awk '{print $1}')
RRD_FILES=$(find "$RRD_DIR" -name '*.rrd' | wc -l)
HOST_RRD_FILES=$(count_host_rrds)
SUMMARY_BYTES=$(find "$RRD_DIR" -path '*__SummaryInfo__*' -name '*.rrd' -printf '%s\n' | awk '{s+=$1} END{printf "%.0f\n", s}')
APPARENT_HOST_BYTES=$(find "$RRD_DIR" -name '*.rrd' -not -path '*__SummaryInfo__*' -printf '%s\n' | awk '{s+=$1} END{printf "%.0f\n", s}')
ALLOC_BYTES=$(du -s --block-size=1 "$RRD_DIR" | awk '{print $1}')

# ------------------------------------------------------------------ report
export TMPD CLK_TCK HOSTS METRICS INTERVAL POLL FEEDERS USED_RRAS RRAS VALUE_TYPE RCVBUF \
  GMOND_RSS GMOND_HWM GMETAD_RSS GMETAD_HWM RRD_BYTES RRD_FILES HOST_RRD_FILES SUMMARY_BYTES \
  APPARENT_HOST_BYTES ALLOC_BYTES DROPS0 DROPS_END RCVERR0 RCVERR_END WARMUP_COMPLETE T_START
python3 - <<'PYEOF'
import json, os, glob
E = os.environ
T = E["TMPD"]; tck = int(E["CLK_TCK"])
def snap(tag):
    d = {}
    for line in open(os.path.join(T, "snap." + tag)):
        k, *v = line.split()
        d[k] = [float(x) for x in v]
    return d
s0, s1 = snap("start"), snap("end")
win = s1["time"][0] - s0["time"][0]
cpu = lambda k: (s1[k][0] - s0[k][0]) / tck
gmond_cpu, gmetad_cpu = cpu("gmond"), cpu("gmetad")
feeders = int(E["FEEDERS"])
feed_cpu = sum(cpu("feed%d" % i) for i in range(feeders))
busy = (s1["sys"][0] - s0["sys"][0]) / tck; total = (s1["sys"][1] - s0["sys"][1]) / tck
# feeder snapshot lines: "snap wall values meta utime stime maxlag"
sent = 0; maxlag = 0.0; feed_out = []
for i in range(feeders):
    snaps = [l.split() for l in open(os.path.join(T, "feed%d.prog" % i)) if l.startswith("snap ")]
    if len(snaps) >= 2:
        sent += int(snaps[-1][2]) - int(snaps[-2][2])
        maxlag = max(maxlag, float(snaps[-1][6]))
    try:
        feed_out.append(json.loads(open(os.path.join(T, "feed%d.out" % i)).read().strip().splitlines()[-1]))
    except Exception:
        pass
drops = int(s1["drops"][0] - s0["drops"][0])
rcverr = int(s1["rcvbuferr"][0] - s0["rcvbuferr"][0])
H, M, I, P = int(E["HOSTS"]), int(E["METRICS"]), float(E["INTERVAL"]), float(E["POLL"])
target = H * M / I
sent_rate = sent / win
seen = max(sent - drops, 0); seen_rate = seen / win
rs = json.load(open(os.path.join(T, "rrdsample.json")))
xml = json.load(open(os.path.join(T, "xml.json")))
host_files = int(E["HOST_RRD_FILES"])
stored_rate = rs.get("updates_per_file", 0) * host_files / rs["window_s"] if rs.get("window_s") else 0
per_m = lambda c, n: round(c / (n / 1e6), 3) if n else None
rrd_bytes = int(E["RRD_BYTES"]); rrd_files = int(E["RRD_FILES"])
desc = rs.get("describe") or {}
def human_span(s):
    return "%.1f d" % (s / 86400) if s >= 86400 * 2 else ("%.1f h" % (s / 3600) if s >= 7200 else "%d min" % (s // 60))
rras = desc.get("rras", [])
ret_desc = "; ".join("%d rows x %ds = %s" % (r["rows"], r["resolution_s"], human_span(r["span_s"])) for r in rras)
longest = max((r["span_s"] for r in rras), default=0)
per_node = rrd_bytes / H
per_node_host_only = int(E["APPARENT_HOST_BYTES"]) / H
res = {
    "hosts": H, "metrics": M, "interval_s": I, "gmetad_poll_s": P, "feeders": feeders,
    "value_type": E["VALUE_TYPE"], "window_s": round(win, 1),
    "warmup_complete": E["WARMUP_COMPLETE"] == "1",
    "samples_per_sec_target": round(target, 1),
    "samples_per_sec_sent": round(sent_rate, 1),
    "samples_per_sec_seen": round(seen_rate, 1),
    "gmond_socket_drops_window": drops, "udp_rcvbuf_errors_window": rcverr,
    "samples_per_sec_stored_by_gmetad": round(stored_rate, 1),
    "gmond_cpu_s": round(gmond_cpu, 2), "gmetad_cpu_s": round(gmetad_cpu, 2), "feeder_cpu_s": round(feed_cpu, 2),
    "gmond_cpu_s_per_million": per_m(gmond_cpu, sent),
    "gmetad_cpu_s_per_million": per_m(gmetad_cpu, sent),
    "total_cpu_s_per_million": per_m(gmond_cpu + gmetad_cpu, sent),
    "total_cpu_s_per_million_seen": per_m(gmond_cpu + gmetad_cpu, seen),
    "gmetad_cpu_s_per_million_stored": per_m(gmetad_cpu, stored_rate * win),
    "feeder_cpu_s_per_million": per_m(feed_cpu, sent),
    "machine_cpu_busy_pct": round(100 * busy / total, 1) if total else None,
    "gmond_rss_kib": int(E["GMOND_RSS"] or 0), "gmond_hwm_kib": int(E["GMOND_HWM"] or 0),
    "gmetad_rss_kib": int(E["GMETAD_RSS"] or 0), "gmetad_hwm_kib": int(E["GMETAD_HWM"] or 0),
    "rrd_bytes": rrd_bytes, "rrd_files": rrd_files, "host_rrd_files": host_files,
    "series_missing": H * M - host_files,
    "rrd_allocated_bytes": int(E["ALLOC_BYTES"]),
    "rrd_bytes_per_host_metric_file": desc.get("bytes"),
    "rrd_bytes_per_node": round(per_node), "rrd_bytes_per_node_host_files_only": round(per_node_host_only),
    "rrd_bytes_per_node_day_over_longest_retention": round(per_node / (longest / 86400)) if longest else None,
    "rrd_retention_description": "preallocated, fixed size per host-metric file; RRAs " + E["USED_RRAS"]
        + " at step %ds: %s" % (desc.get("step_s", P), ret_desc),
    "rrds_stale_in_sample": rs.get("files_never_updated"), "rrd_sample_max_age_s": round(rs["max_age_s_at_end"], 1) if rs.get("max_age_s_at_end") else None,
    "gmetad_poll_cycles_in_window": rs.get("summary_updates"),
    "gmond_xml": {k: xml.get(k) for k in ("xml_bytes", "fetch_s", "hosts", "bench_hosts", "metrics", "metrics_fresh")},
    "feeder_max_lag_s": round(maxlag, 2),
}
print()
print("== Ganglia %s (gmond + gmetad) ==" % "3.7.2")
print("load: %d hosts x %d metrics every %gs = %.0f values/s target; gmetad polls every %gs" % (H, M, I, target, P))
print("window %.0fs: sent %.0f values/s (%d feeder proc, feeder cpu %.1fs, max lag %.2fs); gmond socket drops %d (%.1f%%) -> %.0f values/s reached gmond"
      % (win, sent_rate, feeders, feed_cpu, maxlag, drops, 100.0 * drops / sent if sent else 0, seen_rate))
print("gmetad stored ~%.0f values/s into RRDs (%s poll cycles in window; %s of %s sampled RRDs not updated)"
      % (stored_rate, rs.get("summary_updates"), rs.get("files_never_updated"), rs.get("sampled")))
print("CPU in window: gmond %.1fs, gmetad %.1fs  => %.3f + %.3f = %.3f CPU-s per million samples sent (%.3f per million that reached gmond); machine busy %.0f%%"
      % (gmond_cpu, gmetad_cpu, res["gmond_cpu_s_per_million"] or 0, res["gmetad_cpu_s_per_million"] or 0,
         res["total_cpu_s_per_million"] or 0, res["total_cpu_s_per_million_seen"] or 0, res["machine_cpu_busy_pct"] or 0))
print("memory: gmond RSS %d KiB (peak %d), gmetad RSS %d KiB (peak %d)" % (res["gmond_rss_kib"], res["gmond_hwm_kib"], res["gmetad_rss_kib"], res["gmetad_hwm_kib"]))
print("storage: %d RRD files, %.1f MiB (%d bytes per host-metric file) = %.2f MiB per node, fixed: it is preallocated and covers the whole retention (%s); %.0f bytes per node-day if spread over the longest archive"
      % (rrd_files, rrd_bytes / 2**20, desc.get("bytes") or 0, per_node / 2**20, ret_desc, res["rrd_bytes_per_node_day_over_longest_retention"] or 0))
print("gmond XML at end: %s; series never created (metadata lost): %d" % (json.dumps(res["gmond_xml"]), H * M - host_files))
if not res["warmup_complete"]:
    print("WARNING: warm-up incomplete (not all RRDs existed when the window started)")
print(json.dumps(res))
PYEOF
