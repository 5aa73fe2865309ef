# Sourced by setup.sh and test.sh: one line per installation step for a person, the tools' full output in a log.
log=.venv/setup.log

# quietly WHAT COMMAND...: run COMMAND with its output appended to the log and print "setup: WHAT ... done (Ns)";
# on a terminal the line counts the seconds and shows pip's latest step. On failure: the log's path and last lines,
# then exit 1; on Ctrl-C or SIGTERM: COMMAND is stopped too, exit 130.
quietly() {
  local what=$1 start=$SECONDS pid latest status=0 interrupted=""
  shift
  printf '%s\n' "== $what: $*" >>"$log"
  "$@" </dev/null >>"$log" 2>&1 &
  pid=$!
  # A background command ignores Ctrl-C in a script: stop it ourselves, or pip would go on installing unseen.
  trap 'interrupted=1; kill "$pid" 2>/dev/null' INT TERM
  if [ -t 1 ]; then
    while kill -0 "$pid" 2>/dev/null; do
      latest=$(grep -E '^(Collecting|Downloading|Building|Installing|Successfully)' "$log" | tail -n 1 | cut -c 1-60) || latest=''
      printf '\r\033[Ksetup: %s ... %ds %s' "$what" $((SECONDS - start)) "${latest:+($latest)}"
      sleep 1 || true  # Ctrl-C ends this sleep too: carry on to the message below, not to set -e
    done
    printf '\r\033[K'
  fi
  wait "$pid" || status=$?
  if [ -n "$interrupted" ]; then
    wait "$pid" 2>/dev/null || true  # a signal ends the first wait at once; let the command finish stopping
  fi
  trap - INT TERM
  if [ -n "$interrupted" ]; then
    echo "setup: $what ... interrupted; the output so far is in $log" >&2
    exit 130
  elif [ "$status" = 0 ]; then
    echo "setup: $what ... done ($((SECONDS - start))s)"
  else
    echo "setup: $what ... FAILED; the full output is in $log, ending:" >&2
    tail -n 25 "$log" >&2
    exit 1
  fi
}
