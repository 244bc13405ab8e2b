"""The stages of the batch-normalization experiment (`python -m pipeline.<stage>`) and the
modules they share."""
