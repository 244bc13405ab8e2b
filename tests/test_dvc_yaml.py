"""dvc.yaml declares exactly the files pipeline/layout.py says each variant's stages write."""

from __future__ import annotations

import ast
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


def imported_modules(path: Path) -> set[str]:
    """The `pipeline.*` modules a source file imports anywhere (functions included), except
    under `if TYPE_CHECKING:`, which never runs."""
    tree = ast.parse(path.read_text())
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for statement in block.body
        for node in ast.walk(statement)
    }
    modules = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            # `from pipeline import tracking` imports the module pipeline.tracking.
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {module for module in modules if (ROOT / module_file(module)).is_file()}


def module_file(module: str) -> str:
    """pipeline.x → pipeline/x.py; a package (pipeline, pipeline.tuning) → its __init__.py."""
    parts = module.split(".")
    if parts[0] != "pipeline":
        return "not-a-project-module"
    if (ROOT / Path(*parts)).is_dir():
        return "/".join(parts) + "/__init__.py"
    return "/".join(parts) + ".py"


def packages_of(module: str) -> list[str]:
    """The packages Python runs before `module` (pipeline.tuning.x: pipeline, pipeline.tuning)."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def code_closure(module: str) -> set[str]:
    """The files of `module` and every project module it imports, directly or transitively
    (with each package's __init__.py, which Python runs before any of its modules)."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        current = pending.pop()
        file = module_file(current)
        if file in seen:
            continue
        seen.add(file)
        pending += packages_of(current) + sorted(imported_modules(ROOT / file))
    return seen


def stage_commands(stages: dict[str, Any]) -> dict[str, tuple[str, set[str]]]:
    """Per stage: the module its `cmd` runs and the pipeline/ files among its deps."""
    commands = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        module = re.match(r"python -m (pipeline\.\w+)", body["cmd"])
        assert module, f"stage {name} does not run `python -m pipeline.<stage>`"
        deps = {dep for dep in body.get("deps", []) if dep.startswith("pipeline/")}
        commands[name] = (module[1], deps)
    return commands


def test_code_deps_are_exactly_the_modules_each_stage_imports() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, (module, deps) in stage_commands(stages).items():
        expected = code_closure(module)
        assert deps == expected, (
            f"stage {name}: dvc.yaml lists {sorted(deps - expected)} that {module} does not "
            f"import, and misses {sorted(expected - deps)} that it does"
        )


def test_the_closure_follows_imports_inside_functions_and_skips_type_checking() -> None:
    tune = code_closure("pipeline.tune")
    assert "pipeline/tuning/worker.py" in tune  # imported inside _tune()
    assert "pipeline/tuning/__init__.py" in tune  # run before any of its modules
    assert "pipeline/training.py" in tune  # through the objective
    # The training stage's own logging is not the tuner's: changing it keeps tune up to date.
    assert not {"pipeline/train.py", "pipeline/mlflow_callbacks.py"} & code_closure(
        "pipeline.training"
    )
    assert "pipeline/train.py" not in tune
    assert code_closure("pipeline.fetch") >= {"pipeline/sampling.py", "pipeline/errors.py"}
