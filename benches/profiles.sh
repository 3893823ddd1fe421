#!/usr/bin/env bash
# The release profile (what `cargo run --release` builds: quick to build)
# against the dist profile (fat LTO, one codegen unit: what ships and what the
# other benchmarks measure), side by side in one run: CheckOrigin throughput
# over h2load and the server's CPU time per call, each binary serving
# examples/policy.toml on its own port, the two run in turn (A/B/B/A).
#
#   benches/profiles.sh        # REQUESTS=200000 CONNS=16 STREAMS=16 ROUNDS=4 CORES=shared|spread
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/support/grpc-calls.sh

requests="${REQUESTS:-200000}"
conns="${CONNS:-16}"
streams="${STREAMS:-16}"
rounds="${ROUNDS:-4}"
layout="${CORES:-shared}"

command -v h2load >/dev/null || { echo "h2load is needed: apt-get install nghttp2-client" >&2; exit 2; }
cargo build --release --quiet --bin corsd
cargo build --profile dist --quiet --bin corsd
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

case $layout in
  spread) server_cpus="0-$(($(nproc) - 1))"; client_cpus=$server_cpus ;;
  shared) server_cpus=0; client_cpus=1 ;;
  *) echo "CORES is spread or shared" >&2; exit 2 ;;
esac
h2load_pin=(taskset -c "$client_cpus")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A ports=() spids=()
for profile in release dist; do
  ports[$profile]=$(free_port)
  taskset -c "$server_cpus" "target/$profile/corsd" serve --policy examples/policy.toml \
    --listen "127.0.0.1:${ports[$profile]}" 2>"$work/$profile.log" &
  spids[$profile]=$!
  pids+=($!)
  wait_listening "$work/$profile.log"
  port=${ports[$profile]}
  check_calls
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_s=$(getconf CLK_TCK)
declare -A total=() ticks=()
run() { # profile
  local out rps before used
  port=${ports[$1]}
  before=$(cpu_ticks "${spids[$1]}")
  out=$(h2load_calls "$requests" check_origin -c "$conns" -m "$streams" -t 1)
  used=$(($(cpu_ticks "${spids[$1]}") - before))
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  printf '  %-8s %10.0f req/s  %6.2f us of server CPU a call\n' "$1" "$rps" \
    "$(python3 -c "print($used / $ticks_per_s / $requests * 1e6)")"
  total[$1]=$(python3 -c "print(${total[$1]:-0} + $rps)")
  ticks[$1]=$((${ticks[$1]:-0} + used))
}
echo "CheckOrigin over h2load: $requests requests, $conns x $streams, layout $layout"
for ((r = 0; r < rounds; r++)); do
  if ((r % 2 == 0)); then run release; run dist; else run dist; run release; fi
done
echo "summary:"
echo "  dist / release throughput, all rounds  $(python3 -c "print(f'{${total[dist]} / ${total[release]}:.3f}')")"
echo "  release / dist server CPU per call     $(python3 -c "print(f'{${ticks[release]} / ${ticks[dist]}:.3f}')")"
