#!/usr/bin/env bash
# Rebuild every committed summary table from its own OUT.runs.json with today's code, in an
# empty MLflow store (so nothing but the committed records is read), and copy the Markdown,
# JSON and figures over the committed ones; the records themselves are left as they are.
#
#   docs/ablation/regenerate.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export MLFLOW_TRACKING_URI="sqlite:///$work/empty.db"
python -c "import mlflow; mlflow.set_tracking_uri('$MLFLOW_TRACKING_URI'); mlflow.create_experiment('bn-cifar10')" 2>/dev/null

summary() {  # summary <records> <out> [pipeline.ablation options]
  local records=$1 out=$2
  shift 2
  python -m pipeline.ablation --experiments none --add-runs "$records" --out "$work/$(basename "$out")" "$@" >/dev/null
  for made in "$work/$(basename "$out")".{md,json} "$work/$(basename "$out")"-*.png; do
    [[ -e $made ]] && cp "$made" "$(dirname "$out")/"
  done
  echo "rebuilt $out"
}

summary docs/ablation/part1.runs.json docs/ablation/part1 --reference abl-A
summary docs/ablation/part2.runs.json docs/ablation/part2 --reference abl-A
summary docs/ablation/part3.runs.json docs/ablation/part3 --reference abl-A
summary docs/ablation/part4.runs.json docs/ablation/part4 --reference abl-A
summary docs/ablation/part4.runs.json docs/ablation/part4-vs-defaults --reference abl-D
summary docs/ablation/defaults.runs.json docs/ablation/defaults
summary docs/tuning/tuned12-plain.runs.json docs/tuning/tuned12-plain --reference abl-D
summary docs/tuning/tuned12v2-bn.runs.json docs/tuning/tuned12v2-bn
summary docs/speed/bf16.runs.json docs/speed/bf16 --reference abl-D
summary docs/landscape/defaults.runs.json docs/landscape/defaults
summary docs/landscape/defaults.runs.json docs/landscape/defaults-second-half --landscape-from-step 7035
# The same runs as defaults: its figures are those of defaults.
rm -f docs/landscape/defaults-second-half-{update_ratios,landscape}.png
summary docs/landscape/article.runs.json docs/landscape/article
summary docs/lr_sweep/part1.runs.json docs/lr_sweep/part1 --sweep train.learning_rate --reference lr-1e-3-plain-seeds-1
summary docs/lr_sweep/part2.runs.json docs/lr_sweep/part2 --sweep train.learning_rate --reference lr-1e-4-plain
summary docs/lr_sweep/sweep.runs.json docs/lr_sweep/sweep --sweep train.learning_rate --reference lr-1e-3-plain-seeds-1
summary docs/landscape/sgd-pilot-sigmoid.runs.json docs/landscape/sgd-pilot-sigmoid --sweep train.learning_rate
summary docs/landscape/sgd-pilot-relu.runs.json docs/landscape/sgd-pilot-relu --sweep train.learning_rate
summary docs/lr_sweep/tolerance.runs.json docs/lr_sweep/tolerance --sweep train.learning_rate
summary docs/landscape/sgd-gradient.runs.json docs/landscape/sgd-gradient
