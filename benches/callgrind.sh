#!/usr/bin/env bash
# Instructions per call of CheckOrigin and of grpc.health.v1.Health/Check on
# one corsd, counted by valgrind's callgrind: a count that does not depend on
# what else the machine runs, unlike the wall-clock ratio of benches/h2load.sh.
# corsd runs under callgrind with one worker; h2load first warms it up, then
# for each call the counters are zeroed, CALLS calls are sent and the counts
# are dumped. The instructions counted divided by CALLS is the cost of a call,
# everything the server does for it included (HTTP/2, gRPC, the handler).
#
#   benches/callgrind.sh      # CALLS=20000 KEEP=1 (keep the dumps for callgrind_annotate)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/support/grpc-calls.sh

calls="${CALLS:-20000}"
for tool in valgrind callgrind_control h2load; do
  command -v "$tool" >/dev/null || { echo "$tool is needed: apt-get install valgrind nghttp2-client" >&2; exit 2; }
done
cargo build --profile dist --quiet --bin corsd
work=$(mktemp -d)
pid=""
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null; [[ -z ${KEEP:-} ]] && rm -rf "$work"; true; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.%p" \
  target/dist/corsd serve --policy examples/policy.toml --listen "127.0.0.1:$port" --workers 1 \
  2>"$work/corsd.log" &
pid=$!
wait_listening "$work/corsd.log"
check_calls
load() { h2load_calls "$2" "$1" -c 16 -m 16 -t 1 >/dev/null; } # name count

# A pause before zeroing and before dumping lets the server finish closing
# the previous run's connections, so they count in neither.
declare -A per_call=()
dumps=0
for name in check_origin health; do
  load "$name" 2000
  sleep 1
  callgrind_control --zero "$pid" >/dev/null
  load "$name" "$calls"
  sleep 1
  callgrind_control --dump="$name" "$pid" >/dev/null
  dumps=$((dumps + 1))
  mv "$work/callgrind.$pid.$dumps" "$work/$name.callgrind"
  total=$(awk '/^summary:/ {print $2}' "$work/$name.callgrind")
  per_call[$name]=$((total / calls))
  printf '  %-13s %8d instructions per call\n' "$name" "${per_call[$name]}"
done
echo "  Health / CheckOrigin by instructions: $(python3 -c "print(f'{${per_call[health]} / ${per_call[check_origin]}:.3f}')")  (goal >= 0.95)"
[[ -n ${KEEP:-} ]] && echo "  dumps kept in $work: callgrind_annotate --inclusive=yes $work/check_origin.callgrind"
true
