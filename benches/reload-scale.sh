#!/usr/bin/env bash
# Reload at platform scale (DESIGN.md section 14): a policy directory of
# TENANTS tenants of 20 entries in a Kubernetes ConfigMap layout and in a
# git-sync layout, each updated once under load (CHANGED tenants changed, 5
# removed, 5 added) through examples/reload_scale.rs. Prints start-up time
# and memory, the time from the rename until every change is answered
# through the gRPC API, the calls that failed or waited meanwhile, and a
# single file's reload time.
#
#   benches/reload-scale.sh               # TENANTS=10000 CHANGED=1000 ROUNDS=2
#   TENANTS=100000 benches/reload-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."

tenants="${TENANTS:-10000}"
changed="${CHANGED:-1000}"
rounds="${ROUNDS:-2}"

cargo build --profile dist --quiet --bin corsd --example reload_scale
for ((r = 0; r < rounds; r++)); do
  for layout in configmap git-sync; do
    target/dist/examples/reload_scale --layout "$layout" --tenants "$tenants" --changed "$changed" \
      | grep -v '^  corsd: '
  done
done
