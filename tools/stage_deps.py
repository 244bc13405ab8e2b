"""Each DVC stage's code deps, derived from the import graph, and written into dvc.yaml.

    python -m tools.stage_deps           # exit 1 and name the stages whose deps are stale
    python -m tools.stage_deps --write   # rewrite them (`./tasks.sh deps`)

A stage's code deps are the project modules its `python -m pipeline.<stage>` imports,
directly or transitively, imports inside functions included and `if TYPE_CHECKING:` blocks
excluded (they never run), with each package's __init__.py (Python runs it first).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = ROOT / "dvc.yaml"
_CODE_DEP = re.compile(r"^(?P<indent>\s+)- pipeline/\S+\s*$")
_STAGE = re.compile(r"^  (?P<name>[A-Za-z_][\w-]*):\s*$")


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
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
            # `from pipeline.tracking import store` imports the module pipeline.tracking.store.
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {module for module in modules if (root / module_file(module, root)).is_file()}


def module_file(module: str, root: Path = ROOT) -> str:
    """pipeline.x → pipeline/x.py; a package (pipeline, pipeline.tuning) → its __init__.py."""
    parts = module.split(".")
    if parts[0] != "pipeline":
        return "not-a-project-module"
    if (root / Path(*parts)).is_dir():
        return "/".join(parts) + "/__init__.py"
    return "/".join(parts) + ".py"


def packages_of(module: str) -> list[str]:
    """The packages Python runs before `module` (pipeline.tuning.x: pipeline, pipeline.tuning)."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def code_closure(module: str, root: Path = ROOT) -> set[str]:
    """The files of `module` and every project module it imports, directly or transitively
    (with each package's __init__.py, which Python runs before any of its modules)."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        current = pending.pop()
        file = module_file(current, root)
        if file in seen:
            continue
        seen.add(file)
        pending += packages_of(current) + sorted(imported_modules(root / file, root))
    return seen


def stage_modules(dvc_yaml: dict[str, Any]) -> dict[str, str]:
    """Per stage: the module its `cmd` runs (`python -m pipeline.<stage> ...`)."""
    modules = {}
    for name, stage in dvc_yaml["stages"].items():
        body = stage.get("do", stage)
        match = re.match(r"python -m (pipeline\.\w+)", body["cmd"])
        if match is None:
            raise SystemExit(f"stage {name} does not run `python -m pipeline.<stage>`")
        modules[name] = match[1]
    return modules


def declared_code_deps(dvc_yaml: dict[str, Any]) -> dict[str, set[str]]:
    """Per stage: the pipeline/ files among its deps."""
    return {
        name: {dep for dep in stage.get("do", stage).get("deps", []) if dep.startswith("pipeline/")}
        for name, stage in dvc_yaml["stages"].items()
    }


def with_code_deps(text: str, deps: dict[str, set[str]]) -> str:
    """dvc.yaml's text with each stage's block of `- pipeline/...` deps replaced by `deps`
    (sorted); comments, order and everything else stay as written."""
    out: list[str] = []
    stage = None
    replaced: set[str] = set()
    for line in text.splitlines(keepends=True):
        if header := _STAGE.match(line):
            stage = header["name"]
        dep = _CODE_DEP.match(line)
        if dep and stage in deps:
            if stage not in replaced:
                replaced.add(stage)
                out += [f"{dep['indent']}- {path}\n" for path in sorted(deps[stage])]
            continue
        out.append(line)
    return "".join(out)


def main() -> None:
    """Check dvc.yaml's code deps against the import graph, or rewrite them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps")
    args = parser.parse_args()
    text = DVC_YAML.read_text()
    dvc_yaml = yaml.safe_load(text)
    expected = {name: code_closure(module) for name, module in stage_modules(dvc_yaml).items()}
    stale = sorted(
        name for name, deps in declared_code_deps(dvc_yaml).items() if deps != expected[name]
    )
    if args.write:
        DVC_YAML.write_text(with_code_deps(text, expected))
        print(f"dvc.yaml: code deps rewritten for {', '.join(stale) or 'no stage (all current)'}")
        return
    if stale:
        print(f"dvc.yaml: stale code deps in {', '.join(stale)}; run ./tasks.sh deps")
        sys.exit(1)
    print("dvc.yaml: every stage's code deps match its imports")


if __name__ == "__main__":
    main()
