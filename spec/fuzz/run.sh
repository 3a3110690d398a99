#!/bin/sh
# Runs each libFuzzer harness for a given time, one after the other, and
# prints its executions, coverage and findings.  Usage: run.sh SECONDS NAME...
# (the harnesses are in $FUZZ_BIN, default .build/fuzz/).  Exits 1 if any
# harness found something (its inputs are left in its work directory).
#
# By default each run starts from a fresh copy of the seed corpus
# (spec/fuzz/corpus-NAME/ for a harness that has one, else spec/fuzz/corpus/)
# in .build/fuzz/run-NAME/.  A campaign instead keeps its corpus between
# runs, so a harness too slow to reach its figure in one sitting goes on
# where it stopped:
#   FUZZ_CAMPAIGN=1  work in .build/fuzz/campaign-NAME/, keep the corpus, and
#                    append each run's figures to its ledger, with the last
#                    commit of the fuzzed code (csrc/, lua/, spec/fuzz/ but
#                    this script; "+changes" when the tree differs from it);
#                    the total printed is of the clean runs of this code;
#   FUZZ_JOBS=N      N processes share the corpus (each reads what the others
#                    add); their executions are summed;
#   FUZZ_REPLAY=DIR  afterwards, run the whole corpus once through the
#                    harness built in DIR (the ASan one, when $FUZZ_BIN holds
#                    a faster build without it).
time=$1; shift
bin=${FUZZ_BIN:-.build/fuzz}
jobs=${FUZZ_JOBS:-1}
found=0
for name in "$@"; do
  if [ -n "$FUZZ_CAMPAIGN" ]; then work=.build/fuzz/campaign-$name; else work=.build/fuzz/run-$name; fi
  if [ -z "$FUZZ_CAMPAIGN" ]; then rm -rf "$work"; fi
  mkdir -p "$work/corpus"
  rm -f "$work"/log.*
  for old in "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*; do   # a campaign's earlier findings
    if [ -e "$old" ]; then mkdir -p "$work/found" && mv "$old" "$work/found/"; fi
  done
  seeds=spec/fuzz/corpus
  if [ -d "spec/fuzz/corpus-$name" ]; then seeds=spec/fuzz/corpus-$name; fi   # seeds of its own
  cp "$seeds"/* spec/fuzz/crashes/* "$work/corpus/"   # past findings stay tested
  if [ -n "$FUZZ_CAMPAIGN" ]; then
    # libFuzzer keeps every input it ever added: keep the smallest set with the same coverage.
    rm -rf "$work/merged" && mkdir "$work/merged"
    "$bin/fuzz_$name" -merge=1 -max_len=4096 -timeout=10 -rss_limit_mb=1024 "$work/merged" "$work/corpus" \
      >"$work/log.merge" 2>&1 && rm -rf "$work/corpus" && mv "$work/merged" "$work/corpus"
  fi
  fuzzed="csrc lua spec/fuzz :!spec/fuzz/run.sh"   # the code this run fuzzes, as it starts
  code=$(git log -1 --format=%h -- $fuzzed)
  if [ -n "$(git status --porcelain -- $fuzzed)" ]; then code=$code+changes; fi
  pids=
  job=0
  while [ "$job" -lt "$jobs" ]; do
    job=$((job + 1))
    "$bin/fuzz_$name" -max_total_time="$time" -max_len=4096 -timeout=10 -rss_limit_mb=1024 \
      -print_final_stats=1 -dict=spec/fuzz/qmp.dict -artifact_prefix="$work/" "$work/corpus" \
      >"$work/log.$job" 2>&1 &
    pids="$pids $!"
  done
  status=0
  for pid in $pids; do wait "$pid" || status=$?; done
  # Summed over the jobs: executions and rates; coverage is the best job's.
  execs=$(cat "$work"/log.* | sed -n 's/^stat::number_of_executed_units: *//p' | awk '{ n += $1 } END { print n + 0 }')
  rate=$(cat "$work"/log.* | sed -n 's/^stat::average_exec_per_sec: *//p' | awk '{ n += $1 } END { print n + 0 }')
  cov=$(cat "$work"/log.* | grep -o 'cov: [0-9]*' | awk '$2 > n { n = $2 } END { print "cov: " n + 0 }')
  if [ -n "$FUZZ_REPLAY" ]; then
    "$FUZZ_REPLAY/fuzz_$name" -runs=0 -max_len=4096 -timeout=10 -rss_limit_mb=1024 \
      -artifact_prefix="$work/" "$work/corpus" >"$work/log.replay" 2>&1 || status=$?
    echo "fuzz_$name: corpus of $(ls "$work/corpus" | wc -l) inputs replayed under $FUZZ_REPLAY, exit $status"
  fi
  findings=$(ls "$work" | grep -c -E '^(crash|leak|timeout|oom)-')
  echo "fuzz_$name: $execs execs ($rate/s, $jobs job(s)), $cov, $findings findings, exit $status"
  if [ -n "$FUZZ_CAMPAIGN" ]; then
    echo "$(date -u +%Y-%m-%dT%H:%MZ) code $code, $time s, $jobs job(s): $execs execs, $cov, $findings findings, exit $status" >>"$work/ledger"
    # A finding voids the count until it is fixed: only clean runs of this code add up.
    total=$(grep " code $code, .* 0 findings, exit 0\$" "$work/ledger" | sed 's/.*: \([0-9]*\) execs.*/\1/' | awk '{ n += $1 } END { print n + 0 }')
    echo "fuzz_$name campaign: $total execs in clean runs of code $code ($work/ledger)"
  fi
  if [ "$status" -ne 0 ] || [ "$findings" -ne 0 ]; then
    found=1
    echo "  logs: $work/log.*"; ls "$work" | grep -E '^(crash|leak|timeout|oom)-' | sed "s|^|  input: $work/|"
  fi
done
exit $found
