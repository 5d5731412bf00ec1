#!/usr/bin/env bash
# progress.sh "WHAT" COMMAND [ARG…]: run COMMAND; while it runs, print one line a minute saying
# WHAT it is doing and for how long, so a long quiet step (pip compiling llama.cpp) does not
# look hung. Exits with COMMAND's status. FOOTPRINT_PROGRESS_INTERVAL_S changes the minute.
set -uo pipefail
what=$1
shift
interval=${FOOTPRINT_PROGRESS_INTERVAL_S:-60}
"$@" &
work=$!
started=$SECONDS
(
  # Its sleep is killed with it: a sleep left behind would hold the caller's output open.
  trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  while :; do
    sleep "$interval" >/dev/null 2>&1 &
    nap=$!
    wait "$nap"
    elapsed=$((SECONDS - started))
    printf 'setup: still %s (%dm%02ds so far)\n' "$what" $((elapsed / 60)) $((elapsed % 60))
  done
) &
ticker=$!
stop_all() { kill "$ticker" "$work" 2>/dev/null; }
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
wait "$work"
status=$?
kill "$ticker" 2>/dev/null
wait "$ticker" 2>/dev/null
exit "$status"
