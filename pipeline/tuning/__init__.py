"""Optuna learning-rate studies, one per variant and search configuration.

Read top-down: `spec` says what a study is and names it, `data` what its trials see,
`storage` where it lives, `objective` what one trial trains, `runs` what MLflow records,
and `worker` runs trials until the study holds enough of them.
"""
