#!/usr/bin/env bash
# Run studies/transformer/run.py once per line of each sweep file ("name --flag value ..."), one process at a time,
# skipping names whose results already exist. Usage: studies/transformer/sweep.sh studies/transformer/sweeps/a.txt [b.txt ...]
set -u
cd "$(dirname "$0")/.."
PY=/work/wt/tstudies/transformer/.venv/bin/python
for file in "$@"; do
  while read -r name rest; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    if [[ -f studies/transformer/results/$name.json ]]; then echo "skip $name"; continue; fi
    nice -n 5 $PY studies/transformer/run.py --name "$name" $rest
  done < "$file"
done
