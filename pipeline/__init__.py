"""The batch-normalization experiment.

Entry points sit at the top: the DVC stages (`python -m pipeline.<stage>`) and the `ablation`
and `grid` commands. The library sits in folders named after their roles: cifar10, config,
training, evidence, tracking, records, tuning, grids, analysis and common.
"""

import os

# TensorFlow's C++ INFO lines (oneDNN and CPU-instruction banners, twice per process) read as
# noise in a stage's log; warnings and errors stay. Set before any stage imports TensorFlow;
# a TF_CPP_MIN_LOG_LEVEL the user sets wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
