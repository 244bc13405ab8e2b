"""The stages of the batch-normalization experiment (`python -m pipeline.<stage>`) and the
modules they share."""

import os

# TensorFlow's C++ INFO lines (oneDNN and CPU-instruction banners, twice per process) read as
# noise in a stage's log; warnings and errors stay. Set before any stage imports TensorFlow;
# a TF_CPP_MIN_LOG_LEVEL the user sets wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
