# Sourced by benches/h2load.sh and benches/callgrind.sh: starting on a
# corsd, the two calls they compare, and an h2load run that must succeed.

# Waits for "corsd listening" in log $1 (up to 60 s), or prints it and exits.
wait_listening() {
  for _ in $(seq 600); do grep -q "corsd listening" "$1" && return; sleep 0.1; done
  cat "$1" >&2
  exit 1
}

# Writes the two calls' gRPC frames into $work (benches/support/grpc-frames.py),
# sets `paths` (call name -> method path), and checks that the corsd on $port
# answers each with grpc-status 0 and a message: h2load counts HTTP statuses,
# and gRPC answers 200 whatever its status.
declare -A paths=([check_origin]=/corsd.v1.CorsPolicy/CheckOrigin [health]=/grpc.health.v1.Health/Check)
check_calls() {
  python3 benches/support/grpc-frames.py "$work"
  local name answer
  for name in check_origin health; do
    answer=$(curl -s --http2-prior-knowledge -D "$work/$name.head" -o "$work/$name.out" \
      -H 'content-type: application/grpc' -H 'te: trailers' --data-binary "@$work/$name.bin" \
      "http://127.0.0.1:$port${paths[$name]}" -w '%{http_code}')
    grep -qi '^grpc-status: 0' "$work/$name.head" || { echo "$name: not answered OK" >&2; cat "$work/$name.head" >&2; exit 1; }
    [[ $answer == 200 && -s $work/$name.out ]] || { echo "$name: no answer" >&2; exit 1; }
  done
}

# h2load: $1 calls of call $2 to the corsd on $port, further h2load options
# after them, run under the command in the array `h2load_pin` if set (e.g.
# taskset); prints h2load's report, or exits unless every call succeeded.
h2load_pin=()
h2load_calls() {
  local count=$1 name=$2 out
  shift 2
  out=$(${h2load_pin[@]+"${h2load_pin[@]}"} h2load -n "$count" "$@" -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$work/$name.bin" "http://127.0.0.1:$port${paths[$name]}")
  grep -qE "requests: $count total, $count started, $count done, $count succeeded, 0 failed, 0 errored" <<<"$out" \
    || { echo "$name: not every request succeeded" >&2; echo "$out" >&2; exit 1; }
  echo "$out"
}
