#!/usr/bin/env bash
# The Envoy path, measured: one Envoy process, six listeners that forward the
# same request (an allowed cross-origin GET) to a fifth listener that answers
# with a direct response (Envoy's CORS filter needs a routed request):
#   none    no CORS at all (the floor of the proxy)
#   native  Envoy's own CORS filter with an equivalent policy
#   rbac    corsd's native mode: the RBAC and CORS filters `corsd envoy-config`
#           compiles from the policy, in-process (what `corsd serve --xds`
#           serves)
#   corsd   ext_authz to corsd (the shipped configuration's filter)
#   null    ext_authz to a server that decides nothing and adds no header
#   static  ext_authz to a server that decides nothing but answers with the
#           same headers and dynamic_metadata corsd adds, fixed (the floor
#           with Envoy's work on them)
# driven by wrk, interleaved none/native/rbac/corsd/null/static then in reverse, ROUNDS
# times. The upstream listener runs in an Envoy of its own (BACKEND=apart, the
# default: a backend is another service, and on the shared layout it runs
# beside wrk, so Envoy's core does the proxy's work alone) or in the measured
# Envoy itself (BACKEND=inside: its work then shares Envoy's core and thread). Every response is checked: wrk's non-2xx count must be zero, and each
# listener is probed once for the CORS header it must (or must not) send.
#
# Each layout in CORES is measured in turn, with the same processes re-pinned:
#   spread  Envoy and the ext_authz servers may run on every core
#   shared  Envoy and the ext_authz servers pinned together on core 0 (how a
#           sidecar runs), wrk (and the backend, when apart) on core 1
#
# COUNT=instructions counts instead of timing: the measured Envoy, corsd and
# the stand-in ext_authz servers run under valgrind's callgrind, and for each
# listener their counters are zeroed, CALLS requests are sent (h2load over
# HTTP/1.1, every one checked 2xx) and their instructions per request are
# summed from the dumps: the work of the servers' core in the shared layout. A count does not depend on
# what else the machine runs, which on a shared machine moves wrk's figures
# by more than the differences measured; it leaves out the kernel and cache
# misses (a long list of matchers costs more than its instructions).
#
#   benches/envoy-load.sh            # ENTRIES=100 SECS=5 ROUNDS=2 CONNS=32 CORES="spread shared" LISTENERS="none native ..." BACKEND=apart
#   COUNT=instructions LISTENERS="native rbac" benches/envoy-load.sh   # CALLS=5000
set -euo pipefail
cd "$(dirname "$0")/.."

entries="${ENTRIES:-100}"
# Which listeners are measured, in this order and then in reverse each round
# (all six by default; "native rbac" gives the native-mode comparison more
# rounds in the same time).
read -ra listeners <<<"${LISTENERS:-none native rbac corsd null static}"
for name in "${listeners[@]}"; do
  [[ " none native rbac corsd null static " == *" $name "* ]] \
    || { echo "LISTENERS: no listener $name (none, native, rbac, corsd, null, static)" >&2; exit 2; }
done
secs="${SECS:-5}"
rounds="${ROUNDS:-2}"
conns="${CONNS:-32}"
layouts="${CORES:-spread shared}"
backend="${BACKEND:-apart}"
[[ $backend == apart || $backend == inside ]] || { echo "BACKEND: apart or inside, not $backend" >&2; exit 2; }

count="${COUNT:-}"
[[ -z $count || $count == instructions ]] || { echo "COUNT: instructions or unset, not $count" >&2; exit 2; }
calls="${CALLS:-5000}"
# Under callgrind Envoy runs some 50 times slower than its ext_authz servers.
authz_timeout=0.25s
[[ -n $count ]] && authz_timeout=10s
if [[ -n $count ]]; then
  for tool in valgrind callgrind_control h2load; do
    command -v "$tool" >/dev/null || { echo "$tool is needed: apt-get install valgrind nghttp2-client" >&2; exit 2; }
  done
else
  command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 2; }
fi
command -v taskset >/dev/null || { echo "taskset is needed (util-linux)" >&2; exit 2; }
cpus=$(nproc)
[[ $cpus -ge 2 || $layouts == spread ]] || { echo "the shared layout needs 2 cores; run with CORES=spread" >&2; exit 2; }
cargo build --profile dist --quiet --bin corsd --example load
envoy=$(scripts/fetch-envoy)
work=$(mktemp -d)
pids=()         # the servers measured: pinned to the servers' CPUs
backend_pids=() # the backend Envoy, when apart: pinned with wrk
cleanup() {
  for p in "${pids[@]}" "${backend_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true # callgrind writes its last dump on the way out
  rm -rf "$work"
}
trap cleanup EXIT
[[ -n "${KEEP:-}" ]] && trap "for p in \"\${pids[@]}\" \"\${backend_pids[@]}\"; do kill \$p; done; echo kept \$work" EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p_none=$(free_port); p_native=$(free_port); p_rbac=$(free_port); p_corsd=$(free_port); p_null=$(free_port); p_static=$(free_port)
p_corsd_grpc=$(free_port); p_null_grpc=$(free_port); p_static_grpc=$(free_port); p_admin=$(free_port); p_up=$(free_port)
p_up_admin=$(free_port)

# The policy: ENTRIES exact origins; the request's origin is the middle one.
{
  echo '[cors]'
  echo 'allow_headers = ["content-type", "x-requested-with"]'
  echo 'expose_headers = ["x-request-id"]'
  for ((i = 0; i < entries; i++)); do printf '[[entries]]\norigin = "https://app-%d.example.com"\n' "$i"; done
} > "$work/policy.toml"
origin="https://app-$((entries / 2)).example.com"

# Under COUNT, every process on the servers' core runs under callgrind.
counted=()
[[ -n $count ]] && counted=(valgrind --tool=callgrind --callgrind-out-file="$work/count.%p")
${counted[@]+"${counted[@]}"} target/dist/corsd serve --policy "$work/policy.toml" --listen "127.0.0.1:$p_corsd_grpc" 2>"$work/corsd.log" &
pids+=($!)
${counted[@]+"${counted[@]}"} target/dist/examples/load null-authz --listen "127.0.0.1:$p_null_grpc" >"$work/null.log" 2>&1 &
pids+=($!)
${counted[@]+"${counted[@]}"} target/dist/examples/load null-authz --listen "127.0.0.1:$p_static_grpc" --static-headers "https://app-$((entries / 2)).example.com" >"$work/static.log" 2>&1 &
pids+=($!)

for _ in $(seq 600); do grep -q "corsd listening" "$work/corsd.log" && grep -q listening "$work/null.log" && grep -q listening "$work/static.log" && break; sleep 0.1; done
grep -q "corsd listening" "$work/corsd.log" || { echo "corsd did not start:" >&2; cat "$work/corsd.log" >&2; exit 1; }

# Native mode: the filters and the virtual host's CORS policy as corsd compiles them.
target/dist/corsd envoy-config --policy "$work/policy.toml" > "$work/fragment.json"
rbac_filters=$(python3 -c 'import json,sys
for f in json.load(open(sys.argv[1]))["http_filters"]: print("          - " + json.dumps(f))' "$work/fragment.json")
rbac_vhost=$(python3 -c 'import json,sys
print("              typed_per_filter_config: " + json.dumps(json.load(open(sys.argv[1]))["typed_per_filter_config"]))' "$work/fragment.json")

matchers=$(for ((i = 0; i < entries; i++)); do printf '                  - exact: "https://app-%d.example.com"\n' "$i"; done)

upstream_listener() {
  cat <<YAML
  - name: upstream
    address: { socket_address: { address: 127.0.0.1, port_value: $p_up } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: upstream
          route_config:
            virtual_hosts:
            - name: upstream
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: "{\"ok\":true}" } }
                response_headers_to_add:
                - header: { key: x-request-id, value: req-1 }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
YAML
}

listener() { # name port filters-yaml
  cat <<YAML
  - name: listener_$1
    address: { socket_address: { address: 127.0.0.1, port_value: $2 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: listener_$1
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: upstream }
$( [[ $1 == native ]] && cat <<NATIVE
              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match:
$(echo "$matchers" | sed 's/^/  /')
                  allow_methods: "GET, HEAD, POST, PUT, PATCH, DELETE"
                  allow_headers: "content-type, x-requested-with"
                  expose_headers: "x-request-id"
                  allow_credentials: true
                  max_age: "600"
NATIVE
)
$( [[ $1 == rbac ]] && echo "$rbac_vhost" )
          http_filters:
$3
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
YAML
}
authz() { # cluster
  cat <<YAML
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service: { envoy_grpc: { cluster_name: $1 }, timeout: $authz_timeout }
              failure_mode_allow: false
              # As deploy/envoy/envoy.yaml: only the headers corsd reads.
              allowed_headers: { patterns: [ { exact: origin }, { prefix: access-control-request- } ] }
YAML
}
cluster() { # name port
  cat <<YAML
  - name: $1
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: $1
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } } }] }]
YAML
}
native_filter='          - name: envoy.filters.http.cors
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }'
{
  echo "static_resources:"
  echo "  listeners:"
  listener none "$p_none" ""
  listener native "$p_native" "$native_filter"
  listener rbac "$p_rbac" "$rbac_filters"
  listener corsd "$p_corsd" "$(authz corsd)"
  listener null "$p_null" "$(authz noop_authz)"
  listener static "$p_static" "$(authz static_authz)"
  [[ $backend == inside ]] && upstream_listener
  echo "  clusters:"
  echo "  - name: upstream"
  echo "    type: STATIC"
  echo "    load_assignment: { cluster_name: upstream, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $p_up } } } }] }] }"
  cluster corsd "$p_corsd_grpc"
  cluster noop_authz "$p_null_grpc"
  cluster static_authz "$p_static_grpc"
  echo "admin: { address: { socket_address: { address: 127.0.0.1, port_value: $p_admin } } }"
} > "$work/envoy.yaml"

# Waits for the Envoy whose admin listens on port $1 (log $2) to be ready
# (up to 10 s, or 10 minutes under callgrind).
envoy_ready() {
  local tries=100
  [[ -n $count ]] && tries=6000
  for _ in $(seq "$tries"); do curl -sf "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "envoy did not start:" >&2; tail -5 "$2" >&2; exit 1
}
if [[ $backend == apart ]]; then
  {
    echo "static_resources:"
    echo "  listeners:"
    upstream_listener
    echo "admin: { address: { socket_address: { address: 127.0.0.1, port_value: $p_up_admin } } }"
  } > "$work/backend.yaml"
  "$envoy" -c "$work/backend.yaml" --concurrency 1 --log-level warn --base-id "$p_up_admin" 2>"$work/backend.log" &
  backend_pids+=($!)
  envoy_ready "$p_up_admin" "$work/backend.log"
fi
${counted[@]+"${counted[@]}"} "$envoy" -c "$work/envoy.yaml" --concurrency 1 --log-level warn --base-id "$p_admin" 2>"$work/envoy.log" &
pids+=($!)
envoy_ready "$p_admin" "$work/envoy.log"

path=/services/data/v60.0/query
echo "Envoy $("$envoy" --version | grep -o '1\.[0-9]*\.[0-9]*'), $entries-entry policy, wrk 1 thread x $conns connections, ${secs}s runs, origin $origin, backend $backend"
for name in "${listeners[@]}"; do
  port_var="p_$name"
  probe=$(curl -s -D - -o /dev/null -H "Origin: $origin" "http://127.0.0.1:${!port_var}$path" | tr -d '\r')
  acao=$(grep -i '^access-control-allow-origin:' <<<"$probe" | cut -d' ' -f2 || true)
  case $name in
    native|rbac|corsd|static) [[ $acao == "$origin" ]] || { echo "$name: no Access-Control-Allow-Origin:" >&2; echo "$probe" >&2; exit 1; } ;;
    *) [[ -z $acao ]] || { echo "$name: unexpected Access-Control-Allow-Origin" >&2; exit 1; } ;;
  esac
done

# Each listener's rate, summed over its runs (or, counted, requests per 10^9
# instructions), and the ratios compared.
declare -A total=()
ratio() { python3 -c "print(f'{${total[$1]} / ${total[$2]}:.3f}')"; }
summary() { # a b note: the ratio of two listeners measured
  [[ -n ${total[$1]:-} && -n ${total[$2]:-} ]] && printf '  %-28s %s  %s\n' "$1 / $2" "$(ratio "$1" "$2")" "$3"
  true
}
summaries() {
  summary rbac native "(native mode against Envoy's CORS filter; goals >= 0.95 at 10 entries, >= 1.5 at 10,000)"
  summary rbac corsd ""
  summary corsd native "(goal >= 0.65)"
  summary corsd null "(goal >= 0.95: the decision adds <= 5%)"
  summary corsd static "(the same, with Envoy adding the same headers)"
  summary native none ""
  summary rbac none ""
  summary corsd none ""
}

if [[ -n $count ]]; then
  load() { # listener requests: over HTTP/1.1, every response checked 2xx
    local port_var="p_$1" out
    out=$(h2load --h1 -n "$2" -c 8 -H "Origin: $origin" "http://127.0.0.1:${!port_var}$path")
    grep -q "status codes: $2 2xx" <<<"$out" || { echo "$1: not every response was 2xx" >&2; echo "$out" >&2; exit 1; }
  }
  dumps=0
  for name in "${listeners[@]}"; do
    load "$name" 500
    sleep 1
    for p in "${pids[@]}"; do callgrind_control --zero "$p" >/dev/null; done
    load "$name" "$calls"
    sleep 1
    dumps=$((dumps + 1))
    sum=0
    for p in "${pids[@]}"; do
      callgrind_control --dump="$name" "$p" >/dev/null
      last=$(awk '/^summary:/ {print $2}' "$work/count.$p.$dumps")
      sum=$((sum + last))
    done
    # Envoy is the last process started.
    printf '  %-7s %9d instructions a request, %d of them Envoy'"'"'s\n' "$name" "$((sum / calls))" "$((last / calls))"
    total[$name]=$(python3 -c "print(1e9 * $calls / $sum)")
  done
  echo "summary (instructions, as throughput: the other's count over this one's):"
  summaries
  exit 0
fi

# Pins every thread of the servers (corsd, the two ext_authz servers, Envoy)
# to CPU list $1, and runs wrk (beside the backend, when apart) on $2.
pin() {
  for p in "${pids[@]}"; do taskset -a -p -c "$1" "$p" >/dev/null; done
  for p in "${backend_pids[@]}"; do taskset -a -p -c "$2" "$p" >/dev/null; done
  wrk_cpus=$2
}

run() { # name
  local port_var="p_$1" out rps
  out=$(taskset -c "$wrk_cpus" wrk -t1 -c"$conns" -d"${secs}s" -H "Origin: $origin" "http://127.0.0.1:${!port_var}$path")
  if grep -q "Non-2xx" <<<"$out"; then echo "$1: non-2xx responses" >&2; echo "$out" >&2; exit 1; fi
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  printf '  %-7s %10.0f req/s\n' "$1" "$rps"
  total[$1]=$(python3 -c "print(${total[$1]:-0} + $rps)")
}
all="0-$((cpus - 1))"
for layout in $layouts; do
  case $layout in
    spread) pin "$all" "$all"; echo "layout spread: servers and wrk on CPUs $all" ;;
    shared) pin 0 1; echo "layout shared: Envoy, corsd and the ext_authz servers on CPU 0, wrk$([[ $backend == apart ]] && echo " and the backend") on CPU 1" ;;
    *) echo "unknown layout $layout (spread or shared)" >&2; exit 2 ;;
  esac
  total=()
  for ((r = 0; r < rounds; r++)); do
    for name in "${listeners[@]}"; do run "$name"; done
    for ((i = ${#listeners[@]} - 1; i >= 0; i--)); do run "${listeners[i]}"; done
  done
  echo "summary ($layout):"
  summaries
done
