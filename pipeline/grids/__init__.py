"""Grids of trainings as enqueued trials of an Optuna study, claimed by workers anywhere."""
