"""dvc.yaml declares exactly the files pipeline/config/layout.py says each variant's stages
write."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.layout import variant_files
from pipeline.config.params import load_params
from tools.stage_deps import code_closure, declared_code_deps, stage_modules, with_code_deps

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
        "landscape",
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


def test_code_deps_are_exactly_the_modules_each_stage_imports() -> None:
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    declared = declared_code_deps(dvc_yaml)
    for name, module in stage_modules(dvc_yaml).items():
        expected = code_closure(module)
        assert declared[name] == expected, (
            f"stage {name}: dvc.yaml lists {sorted(declared[name] - expected)} that {module} "
            f"does not import, and misses {sorted(expected - declared[name])} that it does; "
            "run ./tasks.sh deps"
        )


def test_the_deps_command_rewrites_only_the_code_deps(tmp_path: Path) -> None:
    text = (ROOT / "dvc.yaml").read_text()
    stale = text.replace("      - pipeline/compare.py\n", "").replace(
        "      - pipeline/fetch.py\n", "      - pipeline/fetch.py\n      - pipeline/gone.py\n"
    )
    assert stale != text
    dvc_yaml = yaml.safe_load(text)
    expected = {name: code_closure(module) for name, module in stage_modules(dvc_yaml).items()}
    assert with_code_deps(stale, expected) == text


def test_the_closure_follows_imports_inside_functions_and_skips_type_checking() -> None:
    tune = code_closure("pipeline.tune")
    assert "pipeline/tuning/worker.py" in tune  # imported inside _tune()
    assert "pipeline/tuning/__init__.py" in tune  # run before any of its modules
    assert "pipeline/training/fit.py" in tune  # through the objective
    # The training stage's own logging is not the tuner's: changing it keeps tune up to date.
    assert not {"pipeline/train.py", "pipeline/tracking/keras_callbacks.py"} & code_closure(
        "pipeline.training.fit"
    )
    assert "pipeline/train.py" not in tune
    assert code_closure("pipeline.fetch") >= {
        "pipeline/cifar10/sampling.py",
        "pipeline/common/errors.py",
    }


def test_analysis_is_outside_what_the_data_training_and_tuning_stages_import() -> None:
    analysis = {str(path.relative_to(ROOT)) for path in (ROOT / "pipeline/analysis").glob("*.py")}
    assert "pipeline/analysis/summary.py" in analysis
    analysis_only = analysis | {"pipeline/compare.py", "pipeline/ablation.py"}
    for stage in ("fetch", "normalize", "tune", "train", "evaluate"):
        closure = code_closure(f"pipeline.{stage}")
        assert not closure & analysis_only, f"{stage} imports {sorted(closure & analysis_only)}"
    # What only evaluate uses (its confusion figure) stays out of training and tuning too.
    for stage in ("tune", "train"):
        assert "pipeline/evaluate.py" not in code_closure(f"pipeline.{stage}")
    # The data stages load neither TensorFlow's side of the project nor MLflow's.
    for stage in ("fetch", "normalize"):
        heavy = {
            "pipeline/training/fit.py",
            "pipeline/tracking/store.py",
            "pipeline/evidence/probes.py",
        }
        assert not code_closure(f"pipeline.{stage}") & heavy


def test_every_stage_can_have_a_run_cache_entry_another_machine_can_use() -> None:
    """DVC saves a run-cache entry only for a stage with no `persist` output whose outputs
    kept out of its cache are all metrics or plots (dvc/stage/cache.py, Stage.run); and
    `dvc push` sends no output kept out of the cache, which another machine would miss."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for section in ("outs", "metrics", "plots"):
            for entry in body.get(section, []):
                options = {} if isinstance(entry, str) else next(iter(entry.values())) or {}
                assert not options.get("persist"), (name, entry)
                assert options.get("cache", True), (name, entry)
