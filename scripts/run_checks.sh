#!/usr/bin/env bash
# `make test`: run make targets as steps, time each, and print every step's wall time at the end,
# whether the run passed or failed, so the next slowdown is seen the day it lands.
#
#   bash scripts/run_checks.sh unit 'workflow & lint + template + deployment' e2e
#
# Each argument is one step, run after the one before it. A step may be lanes that run at the
# same time, split by "&", each lane its targets one after another, split by "+": the workflow
# tests leave most of a core idle (they wait on moto's interpreter), which the static checks use.
# A lane's output is held in a file and printed whole when its step ends, so lanes never mix. The
# run stops after the first step with a failed target; its output is just above the table.
set -uo pipefail

cd "$(dirname "$0")/.."

names=()
seconds=()
results=()
total_start=$SECONDS
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

summary() {
  echo
  echo "== step times (wall clock) =="
  local i
  for i in "${!names[@]}"; do
    printf '  %-12s %4d s  %s\n' "${names[$i]}" "${seconds[$i]}" "${results[$i]}"
  done
  printf '  %-12s %4d s\n' "total" "$((SECONDS - total_start))"
}

run_lane() {  # run_lane LOG TARGET...: the targets in order; a line "TARGET SECONDS CODE" each
  local log="$1"; shift
  local target start code
  for target in "$@"; do
    start=$SECONDS
    {
      echo
      echo "== make ${target} =="
      make --no-print-directory "$target"
    } >> "${log}.out" 2>&1
    code=$?
    echo "${target} $((SECONDS - start)) ${code}" >> "${log}.times"
    (( code == 0 )) || return "$code"
  done
}

status=0
for step in "$@"; do
  IFS='&' read -r -a lanes <<< "$step"
  pids=()
  for index in "${!lanes[@]}"; do
    IFS='+' read -r -a targets <<< "${lanes[$index]}"
    targets=("${targets[@]// /}")
    if (( ${#lanes[@]} == 1 )); then  # one lane: its output as it comes
      for target in "${targets[@]}"; do
        echo
        echo "== make ${target} =="
        start=$SECONDS
        make --no-print-directory "$target"
        code=$?
        names+=("$target")
        seconds+=("$((SECONDS - start))")
        if (( code == 0 )); then results+=("ok"); else results+=("FAILED (exit ${code})"); status=$code; break; fi
      done
    else
      run_lane "${logs}/lane${index}" "${targets[@]}" &
      pids+=($!)
    fi
  done
  if (( ${#pids[@]} )); then
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    for index in "${!lanes[@]}"; do
      cat "${logs}/lane${index}.out" 2> /dev/null
      while read -r target took code; do
        names+=("$target")
        seconds+=("$took")
        if (( code == 0 )); then results+=("ok (beside another lane)"); else
          results+=("FAILED (exit ${code})"); status=$code; fi
      done < "${logs}/lane${index}.times"
    done
    rm -f "${logs}"/lane*
  fi
  (( status == 0 )) || break
done
summary
exit "$status"
