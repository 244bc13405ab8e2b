"""The analysis of finished runs: loading them, one summary core, its renderings and figures.

Only `compare` and `ablation` import this package; fetch, normalize, tune and train never do
(tests/test_dvc_yaml.py keeps it so), so an edit here reruns `compare` and nothing else.
"""
