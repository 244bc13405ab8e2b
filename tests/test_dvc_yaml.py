"""dvc.yaml declares exactly the files pipeline/layout.py says each variant's stages write."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.layout import variant_files
from pipeline.params import load_params

ROOT = Path(__file__).resolve().parents[1]
STAGE_FILES = {
    "tune": {"tuned"},
    "train": {
        "model",
        "run",
        "learning_curves",
        "train_metrics",
        "history",
        "probes",
        "preactivations",
    },
    "evaluate": {"confusion_png", "test_metrics", "confusion"},
}


def declared_paths(stage: dict[str, Any], variables: dict[str, str]) -> set[str]:
    """The outs, metrics and plots of a `foreach` or `matrix` stage, with ${...} filled in."""
    body = stage.get("do", stage)
    paths = set()
    for section in ("outs", "metrics", "plots"):
        for entry in body.get(section, []):
            template = entry if isinstance(entry, str) else next(iter(entry))
            paths.add(re.sub(r"\$\{([^}]+)\}", lambda match: variables[match[1]], template))
    return paths


def test_per_variant_outputs_match_the_layout() -> None:
    params = load_params(ROOT / "params.yaml")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert (
        set(stages["train"]["matrix"]) == set(stages["evaluate"]["matrix"]) == {"variant", "seed"}
    )
    for variant in params.variants:
        for seed in (*params.seeds, 7):
            files = variant_files(params.paths, variant, seed)
            variables = {
                "key": variant,
                "item.variant": variant,
                "item.seed": str(seed),
                **{f"paths.{k}": str(v) for k, v in params.paths},
            }
            for stage, names in STAGE_FILES.items():
                expected = {str(getattr(files, name)) for name in names}
                assert declared_paths(stages[stage], variables) == expected, stage
    every_file = {field for names in STAGE_FILES.values() for field in names}
    assert every_file == set(vars(variant_files(params.paths, "any", 0)))
