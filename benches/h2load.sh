#!/usr/bin/env bash
# corsd.v1.CorsPolicy/CheckOrigin against grpc.health.v1.Health/Check on the
# same server, driven by h2load (nghttp2's HTTP/2 load generator) with raw
# gRPC frames: the cost of a decision call over the cheapest call the server
# answers. The two are run in turn, ROUNDS times each, and every run must end
# with no failed or errored request. h2load's status count is HTTP's (gRPC
# answers 200 whatever its status), so each body is first sent once with curl
# to check that the server decides it (grpc-status 0 and a non-empty answer).
#
# The server's CPU time per call (user and system, from /proc) is shown too.
#
#   benches/h2load.sh        # REQUESTS=200000 CONNS=16 STREAMS=16 ROUNDS=3 CORES=spread|shared
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/support/grpc-calls.sh

requests="${REQUESTS:-200000}"
conns="${CONNS:-16}"
streams="${STREAMS:-16}"
rounds="${ROUNDS:-3}"
layout="${CORES:-spread}"

command -v h2load >/dev/null || { echo "h2load is needed: apt-get install nghttp2-client" >&2; exit 2; }
cargo build --profile dist --quiet --bin corsd
work=$(mktemp -d)
pid=""
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
case $layout in
  spread) server_cpus="0-$(($(nproc) - 1))"; client_cpus=$server_cpus ;;
  shared) server_cpus=0; client_cpus=1 ;;
  *) echo "CORES is spread or shared" >&2; exit 2 ;;
esac
h2load_pin=(taskset -c "$client_cpus")
taskset -c "$server_cpus" target/dist/corsd serve --policy examples/policy.toml --listen "127.0.0.1:$port" 2>"$work/corsd.log" &
pid=$!
wait_listening "$work/corsd.log"
check_calls

# The server's CPU time so far (user and system, all threads), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
ticks_per_s=$(getconf CLK_TCK)

declare -A total=() best=() ticks=() last=()
pairs=() # each round's CheckOrigin / Health
run() { # name
  local out rps before used
  before=$(cpu_ticks)
  out=$(h2load_calls "$requests" "$1" -c "$conns" -m "$streams" -t 1)
  used=$(($(cpu_ticks) - before))
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  printf '  %-13s %10.0f req/s  %6.2f us of server CPU a call\n' "$1" "$rps" \
    "$(python3 -c "print($used / $ticks_per_s / $requests * 1e6)")"
  total[$1]=$(python3 -c "print(${total[$1]:-0} + $rps)")
  best[$1]=$(python3 -c "print(max(${best[$1]:-0}, $rps))")
  ticks[$1]=$((${ticks[$1]:-0} + used))
  last[$1]=$rps
}
echo "h2load: $requests requests, $conns connections x $streams streams, layout $layout (server on CPUs $server_cpus, h2load on $client_cpus)"
for ((r = 0; r < rounds; r++)); do
  if ((r % 2 == 0)); then run check_origin; run health; else run health; run check_origin; fi
  pairs+=("$(python3 -c "print(${last[check_origin]} / ${last[health]})")")
done
# The machine is shared: the sum over rounds and the best run of each are
# both shown; a burst of outside load lowers a sum, rarely a best.
echo "summary:"
echo "  CheckOrigin / Health, all rounds   $(python3 -c "print(f'{${total[check_origin]} / ${total[health]}:.3f}')")  (goal >= 0.95)"
echo "  CheckOrigin / Health, best runs    $(python3 -c "print(f'{${best[check_origin]} / ${best[health]}:.3f}')")"
# Two runs back to back see much the same outside load: the middle of the
# rounds' own ratios is the least moved by load that comes and goes.
echo "  CheckOrigin / Health, median round $(python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "${pairs[@]}")"
# Less moved by outside load than throughput: what a call costs the server,
# kernel included (which callgrind's counts leave out).
echo "  Health / CheckOrigin, server CPU   $(python3 -c "print(f'{${ticks[health]} / ${ticks[check_origin]}:.3f}')")"
