#!/usr/bin/env bash
# Bounded libFuzzer run of every target in fuzz/ (make fuzz): one build, then
# each target for FUZZ_SECONDS, seeded from fuzz/corpus/<target> (kept in the
# repository, read-only here); what a run discovers goes to
# fuzz/target/work/<target> and is reused by the next run. Prints executions
# per target; exits non-zero on any crash (the input is in fuzz/artifacts/).
#
# As root the targets run as nobody with TMPDIR on a scratch directory: the
# unpacking targets write files, and a containment bug must not be able to
# write where root could.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
CARGO=${CARGO:-cargo}
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-"garden_json stream_in app_package buildpack_release procfile launch_metadata netout_rules proto_requests ssh_login"}
TRIPLE=$($CARGO -vV | sed -n 's/^host: //p')

# libFuzzer's coverage flags are stable -C options; no sanitizer (ASan needs
# nightly, and these are safe-Rust parsers: a panic or a broken invariant is
# the finding). Overflow checks and debug assertions on.
if ! $CARGO fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  $CARGO install cargo-fuzz --locked
fi
$CARGO fuzz build -O -a -s none --codegen-units 8

RUN_AS=()
# tmpfs when there is one: the unpacking targets make and remove a directory
# tree per input.
tmp=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && tmp=/dev/shm
scratch=$(mktemp -d "$tmp/celld-fuzz.XXXXXX")
trap 'rm -rf --one-file-system "$scratch"' EXIT
chmod 711 "$scratch"
if [ "$(id -u)" = 0 ]; then
  RUN_AS=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
fi

declare -A EXECS RESULT
failed=0
for t in $TARGETS; do
  work=target/work/$t
  artifacts=artifacts/$t
  mkdir -p "$work" "$artifacts" "$scratch/$t"
  if [ "$(id -u)" = 0 ]; then
    chown -R nobody:nogroup "$work" "$artifacts" "$scratch/$t"
  fi
  max_len=4096
  case $t in stream_in | app_package) max_len=16384 ;; esac
  log=target/work/$t.log
  echo "fuzz: $t for ${SECONDS_PER_TARGET}s"
  set +e
  TMPDIR=$scratch/$t "${RUN_AS[@]}" "target/$TRIPLE/release/$t" "$work" "corpus/$t" \
    -max_total_time="$SECONDS_PER_TARGET" -max_len=$max_len -timeout=20 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1
  rc=$?
  set -e
  EXECS[$t]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ $rc = 0 ]; then
    RESULT[$t]=ok
  else
    RESULT[$t]="FAILED (exit $rc; see fuzz/$log and fuzz/$artifacts/)"
    failed=1
    grep -m1 -B2 -A20 "panicked\|ERROR: libFuzzer" "$log" || tail -30 "$log"
  fi
done

echo
printf '%-20s %12s %10s %8s  %s\n' target executions per-sec corpus result
for t in $TARGETS; do
  n=${EXECS[$t]:-0}
  corpus=$(find "target/work/$t" -type f | wc -l)
  printf '%-20s %12s %10s %8s  %s\n' "$t" "$n" "$((n / SECONDS_PER_TARGET))" "$corpus" "${RESULT[$t]}"
done
exit $failed
