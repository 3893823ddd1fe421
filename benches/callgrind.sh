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

calls="${CALLS:-20000}"
for tool in valgrind callgrind_control h2load; do
  command -v "$tool" >/dev/null || { echo "$tool is needed: apt-get install valgrind nghttp2-client" >&2; exit 2; }
done
cargo build --release --quiet --bin corsd
work=$(mktemp -d)
pid=""
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null; [[ -z ${KEEP:-} ]] && rm -rf "$work"; true; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.%p" \
  target/release/corsd serve --policy examples/policy.toml --listen "127.0.0.1:$port" --workers 1 \
  2>"$work/corsd.log" &
pid=$!
for _ in $(seq 600); do grep -q "corsd listening" "$work/corsd.log" && break; sleep 0.1; done
grep -q "corsd listening" "$work/corsd.log" || { cat "$work/corsd.log" >&2; exit 1; }

python3 benches/support/grpc-frames.py "$work"
declare -A paths=([check_origin]=/corsd.v1.CorsPolicy/CheckOrigin [health]=/grpc.health.v1.Health/Check)
# h2load counts HTTP statuses, and gRPC answers 200 whatever its status:
# each call is first checked to be answered with grpc-status 0.
for name in check_origin health; do
  curl -s --http2-prior-knowledge -D "$work/$name.head" -o /dev/null -H 'content-type: application/grpc' \
    -H 'te: trailers' --data-binary "@$work/$name.bin" "http://127.0.0.1:$port${paths[$name]}"
  grep -qi '^grpc-status: 0' "$work/$name.head" || { echo "$name: not answered OK" >&2; cat "$work/$name.head" >&2; exit 1; }
done

load() { # name count
  local out
  out=$(h2load -n "$2" -c 16 -m 16 -t 1 -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$work/$1.bin" "http://127.0.0.1:$port${paths[$1]}")
  grep -qE "requests: $2 total, $2 started, $2 done, $2 succeeded, 0 failed, 0 errored" <<<"$out" \
    || { echo "$1: not every request succeeded" >&2; echo "$out" >&2; exit 1; }
}

declare -A per_call=()
# A pause before zeroing and before dumping lets the server finish closing
# the previous run's connections, so they count in neither.
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
