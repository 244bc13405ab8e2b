"""The evidence sampled during training: per-layer probes and the loss landscape."""
