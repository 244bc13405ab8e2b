#!/usr/bin/env bash
# Queue the learning-rate sweep of docs/lr_sweep.md as DVC experiments; run them with
# `dvc queue start -j 1` (each run uses every core), then summarize them with
#   python -m pipeline.ablation --experiments <names...> --reference lr-1e-3-plain
#
#   docs/lr_sweep/queue.sh <data source> [rate ...]
#
# One experiment per rate and variant, named lr-<rate>-<variant>, each training seeds 1-3
# (SEEDS="4 5" replaces them) at the project's defaults with train.learning_rate set to the
# rate. Rates default to the half-decade steps from 1e-4 to 1e-2, the two ends first.
# SETTINGS="key=value ..." adds settings to every run (e.g. the landscape probe, which leaves
# training bit-identical: SETTINGS="train.probe.landscape.every_steps=500").
set -euo pipefail
source="$1"
shift
rates=("${@:-1e-2 1e-4 3.2e-3 3.2e-4 1e-3}")
read -ra rates <<<"${rates[*]}"
seeds="${SEEDS:-1 2 3}"
extra=()
for setting in ${SETTINGS:-}; do extra+=(-S "$setting"); done

value_of() {  # the half-decade steps are 10^(-k/2): 3.2e-3 is written for 10^-2.5
  case "$1" in
    3.2e-3) echo 0.0031622776601683794 ;;
    3.2e-4) echo 0.00031622776601683794 ;;
    *) python3 -c "print(float('$1'))" ;;
  esac
}

for rate in "${rates[@]}"; do
  for variant in plain bn; do
    targets=()
    for seed in $seeds; do targets+=("evaluate@$variant-$seed"); done
    name="lr-$rate-$variant${SEEDS:+-seeds-${seeds// /-}}"
    echo "queue $name: train.learning_rate=$(value_of "$rate") ${targets[*]}"
    dvc exp run --queue -n "$name" -S "data.source=$source" -S "seeds=[${seeds// /, }]" \
      -S "train.learning_rate=$(value_of "$rate")" "${extra[@]}" "${targets[@]}"
  done
done
