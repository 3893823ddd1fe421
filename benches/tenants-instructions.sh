#!/usr/bin/env bash
# What choosing the tenant adds to a decision, in instructions: each case of
# benches/selection_instructions.rs (100,000 decisions) runs under valgrind's
# callgrind, counting only inside its measured loop. Instruction counts do
# not move with the machine's load, unlike the nanoseconds of
# `cargo bench --bench tenants`, which times the same cases.
#
#   benches/tenants-instructions.sh     # CASES="decide_alone by_host/10 ..." ITERATIONS=100000
#
# "added" is against the first case, decide_alone unless CASES says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

cases="${CASES:-decide_alone single_mode by_host/10 by_name/10 by_host/10000 by_name/10000}"
iterations="${ITERATIONS:-100000}"
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 2; }
bench=$(cargo bench --bench selection_instructions --no-run --message-format=json \
  | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "selection_instructions"][-1])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

base=""
printf '  %-14s %9s %8s\n' case "Ir/call" added
for case in $cases; do
  out="$work/$(tr / _ <<<"$case").cg"
  valgrind --tool=callgrind --collect-atstart=no --toggle-collect='selection_instructions::measure*' \
    --callgrind-out-file="$out" "$bench" "$case" "$iterations" >/dev/null 2>"$work/valgrind.log" \
    || { cat "$work/valgrind.log" >&2; exit 1; }
  total=$(awk '/^summary:/ {print $2}' "$out")
  [[ ${total:-0} -gt 0 ]] || { echo "$case: nothing counted inside the measured loop" >&2; exit 1; }
  ir=$((total / iterations))
  [[ -n $base ]] || base=$ir
  printf '  %-14s %9d %+8d  (%+.1f%%)\n' "$case" "$ir" $((ir - base)) "$(python3 -c "print(($ir - $base) / $base * 100)")"
done
