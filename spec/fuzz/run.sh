#!/bin/sh
# Runs each libFuzzer harness for a given time on a fresh copy of the seed
# corpus (spec/fuzz/corpus-NAME/ for a harness that has one, else
# spec/fuzz/corpus/), one after the other, and prints its executions, coverage and
# findings.  Usage: run.sh SECONDS NAME... (the harnesses are in .build/fuzz/).
# Exits 1 if any harness found something (its inputs are left in .build/fuzz/).
time=$1; shift
dir=.build/fuzz
found=0
for name in "$@"; do
  work=$dir/run-$name
  rm -rf "$work" && mkdir -p "$work/corpus"
  seeds=spec/fuzz/corpus
  if [ -d "spec/fuzz/corpus-$name" ]; then seeds=spec/fuzz/corpus-$name; fi   # seeds of its own
  cp "$seeds"/* spec/fuzz/crashes/* "$work/corpus/"   # past findings stay tested
  "$dir/fuzz_$name" -max_total_time="$time" -max_len=4096 -timeout=10 -rss_limit_mb=1024 \
    -print_final_stats=1 -dict=spec/fuzz/qmp.dict -artifact_prefix="$work/" "$work/corpus" >"$work/log" 2>&1
  status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log")
  cov=$(grep -o 'cov: [0-9]*' "$work/log" | tail -n 1)
  findings=$(ls "$work" | grep -c -E '^(crash|leak|timeout|oom)-')
  echo "fuzz_$name: ${execs:-?} execs (${rate:-?}/s), ${cov:-cov: ?}, $findings findings, exit $status"
  if [ "$status" -ne 0 ] || [ "$findings" -ne 0 ]; then
    found=1
    echo "  log: $work/log"; ls "$work" | grep -E '^(crash|leak|timeout|oom)-' | sed "s|^|  input: $work/|"
  fi
done
exit $found
