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
# times. Every response is checked: wrk's non-2xx count must be zero, and each
# listener is probed once for the CORS header it must (or must not) send.
#
# Each layout in CORES is measured in turn, with the same processes re-pinned:
#   spread  Envoy and the ext_authz servers may run on every core
#   shared  Envoy and the ext_authz servers pinned together on core 0 (how a
#           sidecar runs), wrk on core 1
#
#   benches/envoy-load.sh            # ENTRIES=100 SECS=5 ROUNDS=2 CONNS=32 CORES="spread shared" LISTENERS="none native ..."
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

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 2; }
command -v taskset >/dev/null || { echo "taskset is needed (util-linux)" >&2; exit 2; }
cpus=$(nproc)
[[ $cpus -ge 2 || $layouts == spread ]] || { echo "the shared layout needs 2 cores; run with CORES=spread" >&2; exit 2; }
cargo build --release --quiet --bin corsd --example load
envoy=$(scripts/fetch-envoy)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
[[ -n "${KEEP:-}" ]] && trap "for p in \"\${pids[@]}\"; do kill \$p; done; echo kept \$work" EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p_none=$(free_port); p_native=$(free_port); p_rbac=$(free_port); p_corsd=$(free_port); p_null=$(free_port); p_static=$(free_port)
p_corsd_grpc=$(free_port); p_null_grpc=$(free_port); p_static_grpc=$(free_port); p_admin=$(free_port); p_up=$(free_port)

# The policy: ENTRIES exact origins; the request's origin is the middle one.
{
  echo '[cors]'
  echo 'allow_headers = ["content-type", "x-requested-with"]'
  echo 'expose_headers = ["x-request-id"]'
  for ((i = 0; i < entries; i++)); do printf '[[entries]]\norigin = "https://app-%d.example.com"\n' "$i"; done
} > "$work/policy.toml"
origin="https://app-$((entries / 2)).example.com"

target/release/corsd serve --policy "$work/policy.toml" --listen "127.0.0.1:$p_corsd_grpc" 2>"$work/corsd.log" &
pids+=($!)
target/release/examples/load null-authz --listen "127.0.0.1:$p_null_grpc" >"$work/null.log" 2>&1 &
pids+=($!)
target/release/examples/load null-authz --listen "127.0.0.1:$p_static_grpc" --static-headers "https://app-$((entries / 2)).example.com" >"$work/static.log" 2>&1 &
pids+=($!)

for _ in $(seq 100); do grep -q "corsd listening" "$work/corsd.log" && grep -q listening "$work/null.log" && grep -q listening "$work/static.log" && break; sleep 0.1; done
grep -q "corsd listening" "$work/corsd.log" || { echo "corsd did not start:" >&2; cat "$work/corsd.log" >&2; exit 1; }

# Native mode: the filters and the virtual host's CORS policy as corsd compiles them.
target/release/corsd envoy-config --policy "$work/policy.toml" > "$work/fragment.json"
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
              grpc_service: { envoy_grpc: { cluster_name: $1 }, timeout: 0.25s }
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
  upstream_listener
  echo "  clusters:"
  echo "  - name: upstream"
  echo "    type: STATIC"
  echo "    load_assignment: { cluster_name: upstream, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $p_up } } } }] }] }"
  cluster corsd "$p_corsd_grpc"
  cluster noop_authz "$p_null_grpc"
  cluster static_authz "$p_static_grpc"
  echo "admin: { address: { socket_address: { address: 127.0.0.1, port_value: $p_admin } } }"
} > "$work/envoy.yaml"

"$envoy" -c "$work/envoy.yaml" --concurrency 1 --log-level warn --base-id "$p_admin" 2>"$work/envoy.log" &
pids+=($!)
ready=""
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p_admin/ready" >/dev/null 2>&1 && ready=1 && break; sleep 0.1; done
[[ -n $ready ]] || { echo "envoy did not start:" >&2; tail -5 "$work/envoy.log" >&2; exit 1; }

path=/services/data/v60.0/query
echo "Envoy $("$envoy" --version | grep -o '1\.[0-9]*\.[0-9]*'), $entries-entry policy, wrk 1 thread x $conns connections, ${secs}s runs, origin $origin"
for name in none native rbac corsd null static; do
  port_var="p_$name"
  probe=$(curl -s -D - -o /dev/null -H "Origin: $origin" "http://127.0.0.1:${!port_var}$path" | tr -d '\r')
  acao=$(grep -i '^access-control-allow-origin:' <<<"$probe" | cut -d' ' -f2 || true)
  case $name in
    native|rbac|corsd|static) [[ $acao == "$origin" ]] || { echo "$name: no Access-Control-Allow-Origin:" >&2; echo "$probe" >&2; exit 1; } ;;
    *) [[ -z $acao ]] || { echo "$name: unexpected Access-Control-Allow-Origin" >&2; exit 1; } ;;
  esac
done

# Pins every thread of the servers (corsd, the two ext_authz servers, Envoy)
# to CPU list $1, and runs wrk on $2.
pin() {
  for p in "${pids[@]}"; do taskset -a -p -c "$1" "$p" >/dev/null; done
  wrk_cpus=$2
}

declare -A total=()
run() { # name
  local port_var="p_$1" out rps
  out=$(taskset -c "$wrk_cpus" wrk -t1 -c"$conns" -d"${secs}s" -H "Origin: $origin" "http://127.0.0.1:${!port_var}$path")
  if grep -q "Non-2xx" <<<"$out"; then echo "$1: non-2xx responses" >&2; echo "$out" >&2; exit 1; fi
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  printf '  %-7s %10.0f req/s\n' "$1" "$rps"
  total[$1]=$(python3 -c "print(${total[$1]:-0} + $rps)")
}
ratio() { python3 -c "print(f'{${total[$1]} / ${total[$2]}:.3f}')"; }
summary() { # a b note: the ratio of two listeners measured
  [[ -n ${total[$1]:-} && -n ${total[$2]:-} ]] && printf '  %-28s %s  %s\n' "$1 / $2" "$(ratio "$1" "$2")" "$3"
  true
}
all="0-$((cpus - 1))"
for layout in $layouts; do
  case $layout in
    spread) pin "$all" "$all"; echo "layout spread: servers and wrk on CPUs $all" ;;
    shared) pin 0 1; echo "layout shared: Envoy, corsd and the ext_authz servers on CPU 0, wrk on CPU 1" ;;
    *) echo "unknown layout $layout (spread or shared)" >&2; exit 2 ;;
  esac
  total=()
  for ((r = 0; r < rounds; r++)); do
    for name in "${listeners[@]}"; do run "$name"; done
    for ((i = ${#listeners[@]} - 1; i >= 0; i--)); do run "${listeners[i]}"; done
  done
  echo "summary ($layout):"
  summary rbac native "(native mode against Envoy's CORS filter; goals >= 0.95 at 10 entries, >= 1.5 at 10,000)"
  summary rbac corsd ""
  summary corsd native "(goal >= 0.65)"
  summary corsd null "(goal >= 0.95: the decision adds <= 5%)"
  summary corsd static "(the same, with Envoy adding the same headers)"
  summary native none ""
  summary corsd none ""
done
