#!/usr/bin/env bash
# Queue the ablation of docs/ablation.md as DVC experiments; run them with `dvc queue start`
# (one worker on a small machine: each run uses every core), then summarize them with
#   python -m pipeline.ablation --experiments <names...>
#
#   docs/ablation/queue.sh <data source> [names...]
#
# Queues the named experiments (all of them without names), in the order given. Each trains
# one variant (its stages are the targets): plain, or bn for the names ending in -bn.
# SEEDS="4 5" in the environment replaces each experiment's seeds, to add seeds in a later part
# (the experiment is then named e.g. abl-A-eps-seeds-4-5).
# SETTINGS="key=value ..." adds settings to every experiment and SUFFIX="-x" appends to their
# names, e.g. the landscape probe at the article's setup (it leaves training bit-identical):
#   SEEDS="1 2 3" SETTINGS="train.probe.landscape.every_steps=500" SUFFIX=-landscape \
#     docs/ablation/queue.sh <source> abl-A abl-A-bn
# A is the article's code, D the project's defaults; abl-A-x is A with setting x back at its
# default, abl-D+x is D with the article's x alone.
set -euo pipefail
source="$1"
shift

# Each factor as the article's code has it and as the defaults have it: params separated by ';'.
declare -A ARTICLE=(
  [norm]="normalize.method=article"
  [eps]="train.rmsprop_epsilon=outside_sqrt"
  [aug]="train.augmentation.shear_degrees=0.2;train.augmentation.independent_zoom=true;train.augmentation.fill_mode=nearest"
  [half]="train.epoch_fraction=0.5"
  [all50k]="data.val_fraction=0;train.validation_data=test"
)
declare -A DEFAULT=(
  [norm]="normalize.method=standardize"
  [eps]="train.rmsprop_epsilon=inside_sqrt"
  [aug]="train.augmentation.shear_degrees=11.3;train.augmentation.independent_zoom=false;train.augmentation.fill_mode=reflect"
  [half]="train.epoch_fraction=1.0"
  [all50k]="data.val_fraction=0.1;train.validation_data=split"
)
FACTORS=(norm eps aug half all50k)

seeds_for() {  # five seeds for the two factors the question turns on, three for the others
  if [[ $1 == norm || $1 == eps ]]; then echo "1 2 3 4 5"; else echo "1 2 3"; fi
}

queue() {  # queue <name> <variant> "<seeds>" [settings...]
  # Added seeds run as a second experiment (DVC refuses a name twice), named after them;
  # pipeline.ablation groups it with the first, their settings being the same.
  local name=$1${SEEDS:+-seeds-${SEEDS// /-}}${SUFFIX:-} variant=$2 seeds=${SEEDS:-$3}
  shift 3
  local args=() targets=() setting pair
  for setting in "$@" ${SETTINGS:-}; do
    IFS=';' read -ra pairs <<<"$setting"
    for pair in "${pairs[@]}"; do args+=(-S "$pair"); done
  done
  for seed in $seeds; do targets+=("evaluate@$variant-$seed"); done
  echo "queue $name: ${args[*]} ${targets[*]}"
  dvc exp run --queue -n "$name" -S "data.source=$source" -S "seeds=[${seeds// /, }]" \
    "${args[@]}" "${targets[@]}"
}

A=()
for f in "${FACTORS[@]}"; do A+=("${ARTICLE[$f]}"); done

define() {  # define <name> <variant> "<seeds>" [settings...]: one experiment of the ablation
  NAMES+=("$1")
  SPEC[$1]="$(printf '%s\x1f' "${@:2}")"
}
declare -a NAMES=()
declare -A SPEC=()
define abl-A plain "1 2 3 4 5" "${A[@]}"
define abl-D plain "1 2 3 4 5"
for f in "${FACTORS[@]}"; do define "abl-A-$f" plain "$(seeds_for "$f")" "${A[@]}" "${DEFAULT[$f]}"; done
for f in "${FACTORS[@]}"; do define "abl-D+$f" plain "$(seeds_for "$f")" "${ARTICLE[$f]}"; done
define abl-A-bn bn "1 2 3" "${A[@]}"
define abl-D-bn bn "1 2 3"

for name in "${@:-${NAMES[@]}}"; do
  [[ -n ${SPEC[$name]+x} ]] || { echo "unknown experiment $name; known: ${NAMES[*]}" >&2; exit 2; }
  IFS=$'\x1f' read -ra spec <<<"${SPEC[$name]}"
  queue "$name" "${spec[@]}"
done
