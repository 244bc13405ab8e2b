#!/usr/bin/env bash
# Give back the last commit's workspace after a failed or unwanted `dvc repro` (or
# `dvc exp run` in the workspace), whatever state it left:
#   - params.yaml, dvc.lock and what git holds under the output folders (results/,
#     comparison/, reports/: DVC's .gitignore files) as HEAD has them, whether
#     core.autostage staged the new ones or not; files HEAD lacks (a fresh clone's first
#     run: its dvc.lock) are removed;
#   - every output as that dvc.lock names it, from DVC's cache, overwriting any a stage
#     rewrote before it failed (`dvc checkout --force`).
# What git ignores and the lock does not name (data a failed first run fetched) stays, as
# does DVC's cache.
#
#   tools/restore.sh          (or ./tasks.sh restore)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
kept=(params.yaml dvc.lock results comparison reports)
git reset -q HEAD -- "${kept[@]}"   # unstage: a plain `git checkout --` restores from the index
git clean -fdq -- "${kept[@]}"      # what HEAD does not have
mapfile -t committed < <(git ls-tree -r --name-only HEAD -- "${kept[@]}")
if ((${#committed[@]})); then
  git checkout HEAD -- "${committed[@]}"
fi
if [[ -f dvc.lock ]]; then
  # --allow-missing: stages the lock names but no one ran here (`dvc repro train@plain-42`
  # alone) have no outputs to give back, and that is the committed state too.
  dvc checkout --force --allow-missing --quiet
fi
