#!/usr/bin/env bash
# compare.sh: asyncd against the machine, in one run.
#
# Measures, on this machine and in this run, the daemon's figures next to
# the reference points they are judged against -- fio (io_uring and psync
# engines) on the same tmpfs file, a bare unary gRPC call (Health/Check) on
# the same server, and asyncd-bench's reference server (the protocol with no
# system calls: what gRPC alone allows target 1) -- and prints one table:
# measured value, reference, ratio, target, PASS/MISS. --json prints the
# same as one JSON document instead (for comparisons over time).
#
# Rows 7-10 measure the local shared-memory ring (asyncd-bench --mode ring
# and ring-cancel) on the io_uring daemon: 4 KiB random reads at QD128
# against the best fio engine of the run (io_uring QD128 or psync with as
# many jobs as pool threads, whichever is faster), NOP against a fixed
# 5,000,000 ops/s, the p99 of a blocked ring read cancelled by the Cancel
# RPC (what `asyncctl ops cancel` sends) against 200 us, and the ring's NOP
# rate while an operator lists every 100 ms against the rate without.
#
#   tests/bench/compare.sh [--build DIR] [--duration SECONDS] [--json] [--keep-logs]
#
# --build     build tree holding daemon/asyncd and client/asyncd-bench
#             (default: $ASYNCD_BUILD, else build/perf; configure it with
#             -DCMAKE_BUILD_TYPE=Release).
# --duration  measured seconds per asyncd-bench run (default 5; fio always
#             runs 10 s, as the targets specify). About 3 min in all at 5.
# --json      print only the JSON document on stdout (progress goes to stderr).
# --keep-logs copy the raw outputs (bench/fio JSON, daemon logs) to
#             ./compare-logs.<pid> before the temp dir is removed.
#
# Everything lives in a temp dir under /dev/shm (tmpfs, so the page cache
# and not the disk is measured), removed at exit, daemons included.
# Needs: fio, python3 (for the report), a release build.
#
# Targets use env overrides for their shape (defaults in brackets):
#   NOP_QD [1024] NOP_BATCH [256] NOP_STREAMS [2]   target 2 and 5
#   READ_BATCH [32]                                  targets 1, 4 and 7 (QD 128)
#   RING_NOP_QD [1024] RING_NOP_BATCH [256]          targets 8 and 10 (one ring)
#   RING_CANCEL_OPS [100]                            target 9 (reads per round)
# and UNARY_ROUNDS [4]: rounds of target 3 (each side about 3 s a round).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build="${ASYNCD_BUILD:-$repo/build/perf}"
duration=5
json=0
keep_logs=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --json) json=1; shift ;;
    --keep-logs) keep_logs=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/!p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

daemon_bin="$build/daemon/asyncd"
bench_bin="$build/client/asyncd-bench"
for b in "$daemon_bin" "$bench_bin"; do
  [[ -x "$b" ]] || { echo "compare.sh: $b not built" >&2; exit 1; }
done
command -v fio >/dev/null || { echo "compare.sh: fio not installed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "compare.sh: python3 not installed" >&2; exit 1; }

nop_qd="${NOP_QD:-1024}"
nop_batch="${NOP_BATCH:-256}"
nop_streams="${NOP_STREAMS:-2}"
read_batch="${READ_BATCH:-32}"
unary_rounds="${UNARY_ROUNDS:-4}"
ring_nop_qd="${RING_NOP_QD:-1024}"
ring_nop_batch="${RING_NOP_BATCH:-256}"
ring_cancel_ops="${RING_CANCEL_OPS:-100}"
cores="$(nproc)"
pool_threads=$(( 2 * cores > 4 ? 2 * cores : 4 ))  # the daemon's default, made explicit
hold_ops=100000

log() { echo "compare.sh: $*" >&2; }

tmp="$(mktemp -d /dev/shm/asyncd-compare.XXXXXX)"
root="$tmp/root"
out="$tmp/out"
mkdir -p "$root" "$out"
daemon_pid=""
fifo_fd_open=0

stop_daemon() {
  if [[ -n "$daemon_pid" ]]; then
    kill -TERM "$daemon_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=""
  fi
}
cleanup() {
  stop_daemon
  if [[ $fifo_fd_open -eq 1 ]]; then exec 3>&-; fi
  if [[ $keep_logs -eq 1 ]]; then cp -r "$out" "./compare-logs.$$" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_daemon NAME CONFIG [extra flags...]
start_daemon() {
  local name="$1" config="$2"
  shift 2
  sock="$tmp/$name.sock"
  "$daemon_bin" --config "$config" --socket "$sock" --root "$root" --log-level warn "$@" \
    >"$out/daemon-$name.log" 2>&1 &
  daemon_pid=$!
  await_socket "daemon $name" "$out/daemon-$name.log"
}

await_socket() {  # await_socket WHAT LOG: until $daemon_pid listens on $sock, or exits
  for _ in $(seq 200); do
    [[ -S "$sock" ]] && return 0
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.05
  done
  log "$1 did not start:"; cat "$2" >&2
  exit 1
}

bench() {  # bench OUTFILE ARGS...: asyncd-bench against the current daemon
  local file="$1"
  shift
  "$bench_bin" --target "unix:$sock" --output json "$@" >"$out/$file"
}

stream_args=(--mode stream --warmup 1s --duration "${duration}s")
read_shape=(--queue-depth 128 --batch "$read_batch" --connections 1)
read_file=(--mix read=1 --file data.bin --file-size $((64 << 20)))
read_args=("${read_file[@]}" --block-size 4096 "${read_shape[@]}")
nop_args=(--mix nop=1 --queue-depth "$nop_qd" --batch "$nop_batch" --connections "$nop_streams")
ring_args=(--mode ring --warmup 1s --duration "${duration}s")
ring_nop_args=(--mix nop=1 --queue-depth "$ring_nop_qd" --batch "$ring_nop_batch" --connections 1)

log "temp dir $tmp; build $build; $cores cores; $duration s per bench run"
dd if=/dev/urandom of="$root/data.bin" bs=1M count=64 status=none
mkfifo "$root/fifo"
exec 3<>"$root/fifo"  # a writer that never writes: the reads block, the open does not
fifo_fd_open=1

cat >"$tmp/asyncd.toml" <<EOF
[backends]
thread_pool_threads = $pool_threads
[limits]
max_inflight_per_session = 8192
EOF

# --- fio: the kernel's own figures on the same file ---
fio_common=(--filename="$root/data.bin" --size=64M --rw=randread --bs=4k --direct=0
            --time_based --runtime=10 --output-format=json)
log "fio io_uring QD128 (10 s)"
fio --name=uring --ioengine=io_uring --iodepth=128 "${fio_common[@]}" >"$out/fio-uring.json"
log "fio psync x$pool_threads jobs (10 s)"
fio --name=psync --ioengine=psync --numjobs="$pool_threads" --group_reporting \
  "${fio_common[@]}" >"$out/fio-psync.json"

# --- the transport alone: the same client and messages, no system calls ---
# asyncd-bench --mode serve answers the protocol from memory (a read with
# 4 KiB copied from a buffer, all of a batch's completions in one message):
# target 1's ceiling through gRPC on this machine.
start_reference() {
  sock="$tmp/reference.sock"
  "$bench_bin" --mode serve --target "unix:$sock" --block-size 4096 >"$out/reference.log" 2>&1 &
  daemon_pid=$!
  await_socket "reference server" "$out/reference.log"
}
start_reference
log "1, transport alone: 4 KiB reads from the reference server"
bench ref-read.json "${stream_args[@]}" "${read_args[@]}"
log "1, transport alone: NOP"
bench ref-nop.json "${stream_args[@]}" --mix nop=1 "${read_shape[@]}"
stop_daemon

# --- io_uring daemon ---
start_daemon uring "$tmp/asyncd.toml"
log "1: stream 4 KiB random reads QD128"
bench t1-read.json "${stream_args[@]}" "${read_args[@]}"
# Where target 1's time goes: the same stream shape without the read (NOP),
# and reading 1 byte (the kernel's path, almost no payload to carry).
log "1, same shape: NOP"
bench t1-nop.json "${stream_args[@]}" --mix nop=1 "${read_shape[@]}"
log "1, same shape: 1-byte reads"
bench t1-read1.json "${stream_args[@]}" "${read_file[@]}" --block-size 1 "${read_shape[@]}"
# 2 and 5 alternate (without, with, without, with) so drift hits both alike.
for round in 1 2; do
  log "2: stream NOP (round $round)"
  bench "t2-nop-$round.json" "${stream_args[@]}" "${nop_args[@]}"
  log "5: stream NOP while listing every 100 ms (round $round)"
  bench "t5-nop-list-$round.json" "${stream_args[@]}" "${nop_args[@]}" --list-every 100ms
done
# 3: the bare RPC and unary NOP alternate too, one call in flight each.
# Beside each run, the daemon's context switches (all its threads) over most
# of the measured window: what a call costs in thread hand-offs.
unary_d=$(( duration > 6 ? duration / 2 : 3 ))
daemon_switches() {
  cat /proc/"$daemon_pid"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s}'
}
bench_with_switches() {  # like bench; also writes OUTFILE.cs: switches between times t0 and t1
  local file="$1"
  bench "$@" &
  local pid=$!
  sleep 1.5  # past the 1 s warmup
  local c0 t0 c1 t1
  c0=$(daemon_switches); t0=$(date +%s.%N)
  sleep "$(( unary_d - 1 ))"
  c1=$(daemon_switches); t1=$(date +%s.%N)
  wait "$pid"
  echo "{\"switches\": $(( c1 - c0 )), \"t0\": $t0, \"t1\": $t1}" >"$out/$file.cs"
}
# A p99 over a few seconds swings with the machine: several rounds, and the
# order flips each round (health, unary, unary, health, ...) so that neither
# side is always the one after the other.
t3_health() {
  log "3: bare Health/Check (round $1)"
  bench_with_switches "t3-health-$1.json" --mode health --connections 1 --warmup 1s \
    --duration "${unary_d}s"
}
t3_unary() {
  log "3: unary NOP (round $1)"
  bench_with_switches "t3-unary-$1.json" --mode unary --mix nop=1 --connections 1 \
    --warmup 1s --duration "${unary_d}s"
}
for round in $(seq "$unary_rounds"); do
  if (( round % 2 )); then t3_health "$round"; t3_unary "$round"
  else t3_unary "$round"; t3_health "$round"; fi
done
# 7-10: the local ring, on the same daemon.
log "7: ring 4 KiB random reads QD128"
bench t7-ring-read.json "${ring_args[@]}" "${read_args[@]}"
# 8 and 10 alternate like 2 and 5.
for round in 1 2; do
  log "8: ring NOP (round $round)"
  bench "t8-ring-nop-$round.json" "${ring_args[@]}" "${ring_nop_args[@]}"
  log "10: ring NOP while listing every 100 ms (round $round)"
  bench "t10-ring-nop-list-$round.json" "${ring_args[@]}" "${ring_nop_args[@]}" --list-every 100ms
done
log "9: blocked ring reads cancelled by the Cancel RPC"
bench t9-ring-cancel.json --mode ring-cancel --file fifo --block-size 1 \
  --queue-depth "$ring_cancel_ops" --duration "${duration}s"
stop_daemon

# --- thread-pool-only daemon ---
start_daemon pool "$tmp/asyncd.toml" --no-io-uring
log "4: thread pool only, stream 4 KiB random reads QD128"
bench t4-read.json "${stream_args[@]}" "${read_args[@]}"
stop_daemon

# --- memory: 100,000 blocked FIFO reads ---
cat >"$tmp/asyncd-mem.toml" <<EOF
[backends]
uring_entries = 32768
thread_pool_threads = $pool_threads
[limits]
max_inflight_per_session = 131072
max_inflight_total = 262144
EOF
start_daemon mem "$tmp/asyncd-mem.toml"
sleep 0.5
rss_before=$(awk '/^VmRSS/ {print $2}' "/proc/$daemon_pid/status")
log "6: $hold_ops blocked 1-byte FIFO reads"
"$bench_bin" --target "unix:$sock" --output json --mode hold --file fifo --block-size 1 \
  --queue-depth "$hold_ops" --batch 1000 --duration 3s >"$out/t6-hold.json" &
hold_pid=$!
for _ in $(seq 1200); do
  [[ -s "$out/t6-hold.json" ]] && break
  kill -0 "$hold_pid" 2>/dev/null || break
  sleep 0.1
done
sleep 0.5
rss_with=$(awk '/^VmRSS/ {print $2}' "/proc/$daemon_pid/status")
wait "$hold_pid" || log "hold run failed: $(cat "$out/t6-hold.json")"
echo "{\"rss_before_kib\":$rss_before,\"rss_with_kib\":$rss_with,\"ops\":$hold_ops}" \
  >"$out/t6-rss.json"
stop_daemon

# --- report ---
python3 - "$out" "$json" "$cores" "$pool_threads" "$duration" \
  "$nop_qd" "$nop_batch" "$nop_streams" "$read_batch" "$unary_rounds" \
  "$ring_nop_qd" "$ring_nop_batch" "$ring_cancel_ops" <<'PY'
import json, os, subprocess, sys, time
out, as_json, cores, pool, duration = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
nop_qd, nop_batch, nop_streams, read_batch = sys.argv[6:10]
unary_rounds = range(1, int(sys.argv[10]) + 1)
ring_nop_qd, ring_nop_batch, ring_cancel_ops = sys.argv[11:14]
def load(name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)
def fio_iops(name):
    return sum(j["read"]["iops"] for j in load(name)["jobs"])
def mean(xs): return sum(xs) / len(xs)

fio_uring = fio_iops("fio-uring.json")
fio_psync = fio_iops("fio-psync.json")
t1 = load("t1-read.json")
t1_nop, t1_read1 = load("t1-nop.json"), load("t1-read1.json")
ref_read, ref_nop = load("ref-read.json"), load("ref-nop.json")
t2 = [load(f"t2-nop-{r}.json") for r in (1, 2)]
t5 = [load(f"t5-nop-list-{r}.json") for r in (1, 2)]
health = [load(f"t3-health-{r}.json") for r in unary_rounds]
unary = [load(f"t3-unary-{r}.json") for r in unary_rounds]
t4 = load("t4-read.json")
hold = load("t6-hold.json")
t7 = load("t7-ring-read.json")
t8 = [load(f"t8-ring-nop-{r}.json") for r in (1, 2)]
t10 = [load(f"t10-ring-nop-list-{r}.json") for r in (1, 2)]
t9 = load("t9-ring-cancel.json")
rss = load("t6-rss.json")

def ok_ops(r):  # ops that did what was asked (errors would inflate a rate)
    return r["outcomes"]["completed_ok"]

nop_without = mean([r["ops_per_s"] for r in t2])
nop_with = mean([r["ops_per_s"] for r in t5])
h50, h99 = mean([r["latency_us"]["p50"] for r in health]), mean([r["latency_us"]["p99"] for r in health])
u50, u99 = mean([r["latency_us"]["p50"] for r in unary]), mean([r["latency_us"]["p99"] for r in unary])
def switches_per_call(name):
    cs = load(name + ".cs")
    return cs["switches"] / (load(name)["ops_per_s"] * (cs["t1"] - cs["t0"]))
h_cs = mean([switches_per_call(f"t3-health-{r}.json") for r in unary_rounds])
u_cs = mean([switches_per_call(f"t3-unary-{r}.json") for r in unary_rounds])
rss_delta_b = (rss["rss_with_kib"] - rss["rss_before_kib"]) * 1024
per_op = rss_delta_b / rss["ops"] if hold.get("accepted") == rss["ops"] else float("nan")

rows = []
def row(key, what, value, unit, ref, ref_what, ratio, target, cmp, note=""):
    passed = (ratio >= target) if cmp == ">=" else (ratio <= target)
    if ratio != ratio:  # NaN: the measurement failed
        passed = False
    rows.append({"id": key, "what": what, "value": value, "unit": unit, "reference": ref,
                 "reference_what": ref_what, "ratio": ratio, "target": f"{cmp} {target:g}",
                 "pass": passed, "note": note})

row("1", "stream 4K randread QD128 (io_uring)", t1["ops_per_s"], "IOPS", fio_uring,
    "fio io_uring QD128", t1["ops_per_s"] / fio_uring, 0.5, ">=",
    f"batch {read_batch}, p50 {t1['latency_us']['p50']:.0f} us; same shape without the read (NOP) "
    f"{t1_nop['ops_per_s']:,.0f} ops/s ({t1_nop['ops_per_s'] / fio_uring:.2f} of fio), "
    f"1-byte reads {t1_read1['ops_per_s']:,.0f} ops/s ({t1_read1['ops_per_s'] / fio_uring:.2f}); "
    f"the transport alone (reference server, no system calls): 4 KiB reads "
    f"{ref_read['ops_per_s']:,.0f} ops/s ({ref_read['ops_per_s'] / fio_uring:.2f} of fio; the daemon "
    f"reaches {t1['ops_per_s'] / ref_read['ops_per_s']:.2f} of it), NOP {ref_nop['ops_per_s']:,.0f} ops/s")
row("2", "stream NOP", nop_without, "ops/s", 1e6, "1,000,000 ops/s", nop_without / 1e6, 1.0, ">=",
    f"{nop_streams} streams x QD{nop_qd} batch {nop_batch}; runs {t2[0]['ops_per_s']:.0f}, {t2[1]['ops_per_s']:.0f}")
row("3a", "unary NOP p50", u50, "us", h50, "Health/Check p50", u50 / h50, 1.15, "<=",
    f"{mean([r['ops_per_s'] for r in unary]):.0f} vs {mean([r['ops_per_s'] for r in health]):.0f} calls/s; "
    f"inside the daemon (accepted to finished) p50 {mean([r.get('daemon_us', {}).get('p50', float('nan')) for r in unary]):.1f} us; "
    f"daemon context switches per call {u_cs:.1f} vs {h_cs:.1f}")
row("3b", "unary NOP p99", u99, "us", h99, "Health/Check p99", u99 / h99, 1.3, "<=",
    f"inside the daemon p99 {mean([r.get('daemon_us', {}).get('p99', float('nan')) for r in unary]):.1f} us")
row("4", "thread pool 4K randread QD128", t4["ops_per_s"], "IOPS", t1["ops_per_s"],
    "target 1 (io_uring)", t4["ops_per_s"] / t1["ops_per_s"], 0.8, ">=",
    f"fio psync x{pool}: {fio_psync:.0f} IOPS (ratio to it {t4['ops_per_s'] / fio_psync:.2f})")
row("5", "stream NOP, listing every 100 ms", nop_with, "ops/s", nop_without, "target 2",
    nop_with / nop_without, 0.95, ">=",
    f"{sum(r['lister']['lists'] for r in t5)} listings of ~{int(mean([r['lister']['listed_ops'] / max(1, r['lister']['lists']) for r in t5]))} ops, p50 {mean([r['lister']['list_p50_us'] for r in t5]):.0f} us")
row("6", "RSS per blocked FIFO read", per_op, "B/op", 1024, "1 KiB", per_op / 1024, 1.0, "<=",
    f"{hold.get('accepted')} of {rss['ops']} accepted; RSS {rss['rss_before_kib']} -> {rss['rss_with_kib']} KiB")

fio_best = max(fio_uring, fio_psync)
fio_best_what = "fio io_uring QD128" if fio_uring >= fio_psync else f"fio psync x{pool}"
row("7", "ring 4K randread QD128", t7["ops_per_s"], "IOPS", fio_best, fio_best_what,
    t7["ops_per_s"] / fio_best, 0.8, ">=",
    f"batch {read_batch}, p50 {t7['latency_us']['p50']:.0f} us; fio io_uring QD128 {fio_uring:,.0f}, "
    f"psync x{pool} {fio_psync:,.0f} IOPS; stream (target 1) {t1['ops_per_s']:,.0f} IOPS")
ring_nop = mean([r["ops_per_s"] for r in t8])
ring_nop_list = mean([r["ops_per_s"] for r in t10])
row("8", "ring NOP", ring_nop, "ops/s", 5e6, "5,000,000 ops/s", ring_nop / 5e6, 1.0, ">=",
    f"one ring, QD{ring_nop_qd} batch {ring_nop_batch}; runs {t8[0]['ops_per_s']:.0f}, {t8[1]['ops_per_s']:.0f}")
row("9", "ring read cancel p99", t9["latency_us"]["p99"], "us", 200, "200 us",
    t9["latency_us"]["p99"] / 200, 1.0, "<=",
    f"{t9['cancels']} cancels of blocked FIFO reads ({ring_cancel_ops} a round), {t9['cancelled']} CANCELLED, "
    f"{t9['errors']} errors; p50 {t9['latency_us']['p50']:.1f} us; the Cancel RPC's round trip "
    f"p50 {t9['cancel_rpc_us']['p50']:.1f} us p99 {t9['cancel_rpc_us']['p99']:.1f} us")
row("10", "ring NOP, listing every 100 ms", ring_nop_list, "ops/s", ring_nop, "target 8",
    ring_nop_list / ring_nop, 0.95, ">=",
    f"{sum(r['lister']['lists'] for r in t10)} listings of ~{int(mean([r['lister']['listed_ops'] / max(1, r['lister']['lists']) for r in t10]))} ops, p50 {mean([r['lister']['list_p50_us'] for r in t10]):.0f} us")

errors = {}
for name, r in [("t1", t1), ("t1.nop", t1_nop), ("t1.read1", t1_read1), ("t4", t4),
                ("ref.read", ref_read), ("ref.nop", ref_nop)] + [(f"t2.{i}", r) for i, r in enumerate(t2)] + \
        [(f"t5.{i}", r) for i, r in enumerate(t5)] + [(f"unary.{i}", r) for i, r in enumerate(unary)] + \
        [("t7", t7)] + [(f"t8.{i}", r) for i, r in enumerate(t8)] + [(f"t10.{i}", r) for i, r in enumerate(t10)]:
    bad = r["outcomes"]["completed_errno"] + sum(v for k, v in r["outcomes"].items() if k not in ("completed_ok", "completed_errno"))
    if bad or r["rpc_errors"]:
        errors[name] = {"not_ok": bad, "errnos": r["errnos"], "rpc_errors": r["rpc_errors"]}

def kernel():
    try: return os.uname().release
    except Exception: return ""
doc = {
    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "host": {"cores": cores, "kernel": kernel()},
    "settings": {"duration_s": duration, "pool_threads": pool, "nop_qd": int(nop_qd),
                 "nop_batch": int(nop_batch), "nop_streams": int(nop_streams), "read_batch": int(read_batch),
                 "ring_nop_qd": int(ring_nop_qd), "ring_nop_batch": int(ring_nop_batch),
                 "ring_cancel_ops": int(ring_cancel_ops)},
    "fio": {"io_uring_qd128_iops": fio_uring, "psync_iops": fio_psync, "psync_jobs": pool},
    "transport_alone": {"read_4k_qd128_ops_per_s": ref_read["ops_per_s"],
                        "nop_qd128_ops_per_s": ref_nop["ops_per_s"]},
    "results": rows,
    "errors": errors,
    "passed": sum(r["pass"] for r in rows),
    "total": len(rows),
}
if as_json:
    print(json.dumps(doc, indent=2))
    sys.exit(0)

def fmt(v, unit):
    if v != v: return "n/a"
    if unit in ("IOPS", "ops/s"): return f"{v:,.0f} {unit}"
    if unit == "us": return f"{v:.1f} us"
    return f"{v:.0f} {unit}"
print(f"asyncd compare: {cores} cores, kernel {kernel()}, {duration:g} s per bench run")
print(f"fio 4K randread on tmpfs: io_uring QD128 {fio_uring:,.0f} IOPS; psync x{pool} jobs {fio_psync:,.0f} IOPS")
print()
hdr = f"{'#':<3} {'measured':<34} {'value':>16} {'reference':>16}  {'(of)':<20} {'ratio':>6} {'target':>7}  result"
print(hdr)
print("-" * len(hdr))
for r in rows:
    print(f"{r['id']:<3} {r['what']:<34} {fmt(r['value'], r['unit']):>16} {fmt(r['reference'], r['unit'] if r['id'] != '6' else 'B/op'):>16}  "
          f"{r['reference_what']:<20} {r['ratio']:>6.2f} {r['target']:>7}  {'PASS' if r['pass'] else 'MISS'}")
    if r["note"]:
        print(f"{'':<4}{r['note']}")
print()
print(f"{doc['passed']} of {doc['total']} targets met")
if errors:
    print("ops that did not complete OK:", json.dumps(errors))
PY
