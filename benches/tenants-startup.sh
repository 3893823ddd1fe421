#!/usr/bin/env bash
# Start-up of `corsd serve --policy-dir` with many tenants: the time from
# exec to "corsd listening" and the resident memory once it listens, against
# the same corsd started on one small policy file in the same run.
#
#   benches/tenants-startup.sh        # TENANTS=10000 ENTRIES=20 ROUNDS=3
set -euo pipefail
cd "$(dirname "$0")/.."

tenants="${TENANTS:-10000}"
entries="${ENTRIES:-20}"
rounds="${ROUNDS:-3}"

cargo build --profile dist --quiet --bin corsd
work=$(mktemp -d)
pid=""
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

mkdir "$work/dir"
python3 - "$work/dir" "$tenants" "$entries" <<'PY'
import sys
out, tenants, entries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(tenants):
    lines = [f'label = "org-{i}"', "[scope]", f'hosts = ["org-{i}.my.example.com", "api.example.com"]']
    for e in range(entries):
        origin = f"https://app-{e}.org-{i}.example" if e % 2 == 0 else f"https://*.p{e}.org-{i}.example"
        lines += ["[[entries]]", f'origin = "{origin}"']
    with open(f"{out}/org-{i}.toml", "w") as f:
        f.write("\n".join(lines) + "\n")
PY
printf '[[entries]]\norigin = "https://a.example"\n' > "$work/one.toml"

start() { # label flag path -> prints seconds and RSS MiB
  local log="$work/log" t0 t1 rss
  t0=$(date +%s.%N)
  target/dist/corsd serve "$2" "$3" --listen 127.0.0.1:0 2>"$log" &
  pid=$!
  until grep -q "corsd listening" "$log"; do
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.01
  done
  t1=$(date +%s.%N)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  python3 -c "print(f'  {\"$1\":<28} {$t1 - $t0:6.3f} s  {$rss / 1024:7.1f} MiB')"
}
echo "start-up: $tenants tenants of $entries entries each (goal: 3 s or less, 300 MB or less)"
for ((r = 0; r < rounds; r++)); do
  start "one small policy file" --policy "$work/one.toml"
  start "$tenants tenants" --policy-dir "$work/dir"
done
