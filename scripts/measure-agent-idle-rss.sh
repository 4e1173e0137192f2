#!/usr/bin/env bash
# Idle memory of the release duban-agent: one CSV source every hour, /metrics on, an empty
# outbox and no reachable aggregator; read 10 s after start. Prints VmRSS and how much of it is
# anonymous (heap, stacks) versus file-backed (the executable's pages).
#   cargo build --release -p duban-agent && bash scripts/measure-agent-idle-rss.sh
set -euo pipefail
bin="${1:-$(dirname "$0")/../target/release/duban-agent}"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin" keygen --out "$dir" >/dev/null 2>&1
printf 'indicator,period,value\npct-applications,2018Q1,1\n' > "$dir/pct.csv"
cat > "$dir/agent.toml" <<TOML
unit = "laoshan"
plan = "qingdao-ip-2017"
private_key = "signing.key"
[aggregator]
endpoints = ["http://127.0.0.1:9"]
insecure_plaintext = true
[outbox]
path = "outbox.db"
[metrics]
listen = "127.0.0.1:0"
[[source]]
name = "pct"
kind = "csv"
path = "pct.csv"
every = "1h"
splay = "59m"
TOML
"$bin" run --config "$dir/agent.toml" 2>"$dir/log" &
pid=$!
sleep 10
grep -E 'VmRSS|RssAnon|RssFile' "/proc/$pid/status"
kill -TERM "$pid"
wait "$pid" || true
