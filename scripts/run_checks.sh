#!/usr/bin/env bash
# `make test`: run the named make targets one after another, time each, and print every step's
# wall time at the end, whether the run passed or failed, so the next slowdown is seen the day it
# lands. Stops at the first step that fails (its output is the last thing above the table).
#
#   bash scripts/run_checks.sh lint template deployment unit workflow e2e
set -uo pipefail

cd "$(dirname "$0")/.."

names=()
seconds=()
results=()
total_start=$SECONDS

summary() {
  echo
  echo "== step times (wall clock) =="
  local i
  for i in "${!names[@]}"; do
    printf '  %-12s %4d s  %s\n' "${names[$i]}" "${seconds[$i]}" "${results[$i]}"
  done
  printf '  %-12s %4d s\n' "total" "$((SECONDS - total_start))"
}

status=0
for target in "$@"; do
  echo
  echo "== make ${target} =="
  start=$SECONDS
  make --no-print-directory "$target"
  code=$?
  names+=("$target")
  seconds+=("$((SECONDS - start))")
  if (( code == 0 )); then
    results+=("ok")
  else
    results+=("FAILED (exit ${code})")
    status=$code
    break
  fi
done
summary
exit "$status"
