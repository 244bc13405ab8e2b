"""Runs grouped by the settings that differ between them: one group per setting of a grid."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.analysis.runs import RunResult
from pipeline.common.errors import PipelineError
from pipeline.config.same_result import same_result_keys
from pipeline.tracking import names

# Params that cannot change what a run learns (params.py marks them SAME_RESULT), that tell
# its replicates apart, or that record where its rate came from: never a factor of a grid.
NOT_A_FACTOR = frozenset(
    {"seed", "variant", names.LEARNING_RATE_SOURCE_PARAM, *same_result_keys("train")}
)


@dataclass
class Group:
    """Runs that share every factor: one setting of the grid."""

    factors: dict[str, str]
    experiments: list[str] = field(default_factory=list)
    runs: list[RunResult] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Its DVC experiment names, or its factors where it has none."""
        if self.experiments:
            return ", ".join(self.experiments)
        return ", ".join(f"{key}={value}" for key, value in self.factors.items()) or "all"

    def variants(self, order: list[str] | None = None) -> list[str]:
        """The variants it holds: in `order` where given (others after it), else sorted."""
        present = sorted({run.variant for run in self.runs})
        if order is None:
            return present
        return [v for v in order if v in present] + [v for v in present if v not in order]

    def runs_of(self, variant: str) -> list[RunResult]:
        """Its runs of one variant, in the order they were read."""
        return [run for run in self.runs if run.variant == variant]


def group_runs(runs: list[RunResult]) -> list[Group]:
    """Groups of runs with equal values of every param that differs between runs of the same
    variant (the settings a variant itself changes, such as train.batch_norm, are not factors)."""
    keys = sorted({key for run in runs for key in run.params} - NOT_A_FACTOR)
    variants = {run.variant for run in runs}
    factors = [
        key
        for key in keys
        if any(
            len({run.params.get(key, "") for run in runs if run.variant == variant}) > 1
            for variant in variants
        )
    ]
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        signature = tuple(run.params.get(key, "") for key in factors)
        group = groups.setdefault(signature, Group(dict(zip(factors, signature, strict=True))))
        group.runs.append(run)
        if run.experiment and run.experiment not in group.experiments:
            group.experiments.append(run.experiment)
    return list(groups.values())


def pick_reference(groups: list[Group], name: str | None) -> Group:
    """The group named `name` (a DVC experiment, or its full name), else the first."""
    if name is None:
        return groups[0]
    for group in groups:
        if name in group.experiments or name == group.name:
            return group
    known = "; ".join(group.name for group in groups)
    raise PipelineError(f"no group is called {name!r}; the groups are: {known}")
