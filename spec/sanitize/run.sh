#!/bin/sh
# Runs the busted suite with a sanitizer; `make test-asan` and `make
# test-valgrind` call it after building what it needs.
#   run.sh asan [busted args]      ASan+UBSan build of the C core in .build/asan
#   run.sh valgrind [busted args]  the normal build, busted under memcheck
# Specs tagged #timing (wall-clock bounds that a slowed-down process cannot
# keep) are left out of both; those tagged #memory (bounds on the resident
# set of a child lua5.4, which ASan's allocator inflates: redzones, a 256 MiB
# quarantine) out of the ASan run, where that child is instrumented too.  Exits non-zero when a spec fails or when any
# process wrote a sanitizer report or valgrind found an error or a leak.
set -u
mode=$1; shift
top=$(pwd)
export LOCPATH="$top/.build/locale"

case $mode in
asan)
  out=$top/.build/asan
  reports=$out/reports
  rm -rf "$reports" && mkdir -p "$reports"
  lua=$(command -v lua5.4)
  QMP_SAN_LUA=$lua
  QMP_SAN_LDSO=$(readelf -l "$lua" | sed -n 's/.*interpreter: \(.*\)\]$/\1/p')
  QMP_SAN_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  QMP_SAN_INIT=$top/spec/sanitize/init.lua
  # lua5.4 on PATH is the wrapper; the include directory beside its bin/ is
  # where luarocks (the rockspec spec) looks for lua.h.
  mkdir -p "$out/bin" "$out/include"
  cp spec/sanitize/lua5.4-asan "$out/bin/lua5.4"
  inc=$(pkg-config --cflags-only-I lua5.4 2>/dev/null | sed 's/^ *-I//; s/ .*//')
  ln -sfn "${inc:-/usr/include/lua5.4}" "$out/include/lua5.4"
  QMP_SAN_CPATH=$out/?.so
  export QMP_SAN_LUA QMP_SAN_LDSO QMP_SAN_PRELOAD QMP_SAN_INIT QMP_SAN_CPATH
  # Reports go to files, one per process, so that those of the processes a
  # spec starts are seen too.
  export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:log_path=$reports/asan"
  export LSAN_OPTIONS="suppressions=$top/spec/sanitize/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan"
  echo "test-asan: qmp.core with cJSON $(dpkg-parsechangelog -l "$out/cjson/debian/changelog" -S Version 2>/dev/null), $(gcc -dumpfullversion) -fsanitize=address,undefined"
  start=$(date +%s)
  PATH="$out/bin:$PATH" busted --lua=lua5.4 --exclude-tags=timing,memory "$@"
  status=$?
  end=$(date +%s)
  found=$(ls "$reports" | wc -l)
  for f in "$reports"/*; do [ -e "$f" ] && { echo "== $f"; cat "$f"; }; done
  echo "test-asan: busted exit $status, $found sanitizer report(s), $((end - start)) s"
  ;;
valgrind)
  out=$top/.build/valgrind
  rm -rf "$out" && mkdir -p "$out"
  export QMP_VALGRIND_LOG="$out/memcheck.%p.log"
  start=$(date +%s)
  busted --lua="$top/spec/sanitize/valgrind-lua5.4" --exclude-tags=timing "$@"
  status=$?
  end=$(date +%s)
  found=0
  logs=0
  for f in "$out"/memcheck.*.log; do
    [ -e "$f" ] || continue
    logs=$((logs + 1))
    sed -n 's/^==[0-9]*== *\(in use at exit\|All heap blocks\|definitely lost\|indirectly lost\|possibly lost\|ERROR SUMMARY\)/memcheck: \1/p' "$f"
    if ! grep -q 'ERROR SUMMARY: 0 errors' "$f"; then found=$((found + 1)); echo "== $f"; cat "$f"; fi
  done
  [ "$logs" -eq 1 ] || { echo "test-valgrind: $logs memcheck logs, not 1"; found=$((found + 1)); }
  echo "test-valgrind: busted exit $status, $found log(s) with errors, $((end - start)) s"
  ;;
*)
  echo "usage: run.sh asan|valgrind [busted args]" >&2; exit 2 ;;
esac
[ "$status" -eq 0 ] && [ "$found" -eq 0 ]
