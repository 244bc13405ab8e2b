#!/usr/bin/env bash
# Set up the project and run its common tasks. Every task first makes .venv match uv.lock.
#
#   ./tasks.sh pipeline [dvc repro args]   set up, then run the pipeline (dvc repro)
#   ./tasks.sh test [pytest args]          set up, lint (ruff, mypy, dvc.yaml's code deps), then
#                                          run the test suite (without `slow`)
#   ./tasks.sh exps [dvc exp show args]    experiments at a glance: changed params, headline metrics
#   ./tasks.sh setup                       only set up
#   ./tasks.sh lint                        ruff check + format check + mypy + code deps check
#   ./tasks.sh deps                        write each stage's code deps into dvc.yaml
#   ./tasks.sh restore                     the last commit's workspace after a failed or unwanted
#                                          dvc repro, whatever it left (tools/restore.sh)
#   ./tasks.sh ui [--port N]               mlflow ui on the project's store, with the link to its runs
#   ./tasks.sh dashboard [--port N]        optuna-dashboard on the studies' storage (tune.storage)
#
# On Linux x86_64, set-up installs TensorFlow's GPU build (tensorflow[and-cuda], CUDA from the
# wheels) where `nvidia-smi` finds a GPU, else its CPU build; --gpu or --cpu before the task
# forces one, e.g. `./tasks.sh --cpu test`.
set -euo pipefail
cd "$(dirname "$0")"

UV_VERSION="0.13.9"
TOOLS=".cache/tools"   # a private venv holding the pinned uv, so no global install is needed

python_311() {
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
  echo "error: Python 3.11 is required; install it (e.g. apt-get install python3.11 python3.11-venv)" >&2
  exit 1
}

tensorflow_build() {  # the pyproject extra: gpu where nvidia-smi lists a GPU, else cpu
  if [ -n "${BUILD:-}" ]; then
    echo "$BUILD"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo gpu
  else
    echo cpu
  fi
}

setup() {
  local python build
  python="$(python_311)"
  build="$(tensorflow_build)"
  if [ ! -x "$TOOLS/bin/uv" ] || [ "$("$TOOLS/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    "$python" -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  fi
  # --frozen: install exactly what uv.lock pins, never re-resolve.
  # --compile-bytecode: write the .pyc files once at install. Where PYTHONDONTWRITEBYTECODE is
  # set, Python would otherwise recompile TensorFlow, MLflow and DVC in every process (an
  # import of TensorFlow takes 3x longer, a no-op `dvc repro` 2x).
  # --extra: one TensorFlow build; uv removes the other one if it is installed.
  "$TOOLS/bin/uv" sync --frozen --compile-bytecode --python "$python" --quiet --extra "$build"
  export PATH="$PWD/.venv/bin:$PATH"   # DVC stages call `python -m pipeline.<stage>`
  python -m tools.plots_template   # vega inline, so `dvc plots show` renders offline
}

lint() {
  ruff check . && ruff format --check . && mypy pipeline bench tests tools && python -m tools.stage_deps
}

serve() {  # serve <mlflow|dashboard> [--port N]: print the link, then run the server
  local which=$1 lines url command
  shift
  [[ $which == ui ]] && which=mlflow
  mapfile -t lines < <(python -m tools.ui "$which" "$@")
  command="${lines[-1]}"
  url="${lines[-2]}"
  if [[ -z $command ]]; then  # a tracking server is configured: nothing to start
    echo "MLflow runs (Model training view): $url"
    return
  fi
  printf '%s\n' "${lines[@]:0:${#lines[@]}-2}"
  echo "open: $url   (Ctrl-C stops the server)"
  eval "exec $command"
}

BUILD=""
case "${1:-}" in
  --gpu | --cpu) BUILD="${1#--}" && shift ;;
esac
task="${1:-}"
shift || true
case "$task" in
  setup) setup ;;
  pipeline) setup && dvc repro "$@" ;;
  test) setup && lint && python -m pytest -n 2 --dist loadfile "$@" ;;  # one file per worker: module fixtures stay shared
  # `dvc exp show` has a column per metric of every run (60+ with three seeds) and no setting
  # to hide them: this keeps the params that differ between experiments and the headline
  # (comparison/headline.json). DVC names a metric column by its key alone where the key is
  # unique, by file:key where not; either way the per-run files, summary.json's sections and
  # the data deps match the pattern. The full table: `dvc exp show`, `--json`, `dvc metrics show`.
  exps)
    setup && dvc exp show --only-changed --precision 4 \
      --drop '^(results|models|data|pipeline)(/|$)|^(runs|variants|differences)\.' "$@"
    ;;
  lint) setup && lint ;;
  restore) PATH="$PWD/.venv/bin:$PATH" tools/restore.sh ;;  # no set-up: nothing to install
  deps) setup && python -m tools.stage_deps --write ;;
  ui | dashboard) setup && serve "$task" "$@" ;;
  *)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
