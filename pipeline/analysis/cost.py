"""What a summary's runs cost to train, from each run's `cost` record: per group and variant,
the training time over its runs and the share the probes took of it. Records written before
the cost was kept have none and are left out (the section says how many it read)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.analysis.render import Table
from pipeline.analysis.runs import RunResult
from pipeline.analysis.summary import Summary


@dataclass(frozen=True)
class CostRow:
    """One group and variant: each of its costed runs' training minutes and probe shares."""

    group: str
    variant: str
    minutes: list[float]
    probe_overhead: list[float]
    landscape_overhead: list[float]  # the runs that took landscape measures only
    devices: list[str]

    @property
    def total_minutes(self) -> float:
        return sum(self.minutes)


def cost_rows(summary: Summary) -> list[CostRow]:
    """A row per group and variant with at least one costed run."""
    rows = []
    for row in summary.rows:
        runs = [run for run in row.runs if costed(run)]
        if runs:
            rows.append(
                CostRow(
                    group=row.group,
                    variant=row.variant,
                    minutes=[run.cost["wall_seconds"] / 60 for run in runs],
                    probe_overhead=[run.cost.get("probe_overhead", 0.0) for run in runs],
                    landscape_overhead=[
                        share for run in runs if (share := run.cost.get("landscape_overhead", 0))
                    ],
                    devices=sorted({run.device for run in runs if run.device}),
                )
            )
    return rows


def cost_markdown(rows: list[CostRow], left_out: int = 0) -> str:
    """The cost section of a summary's page ("" where no run kept its cost); `left_out`
    counts the runs read whose records predate the cost."""
    if not rows:
        return ""
    runs = sum(len(row.minutes) for row in rows)
    devices = sorted({device for row in rows for device in row.devices})
    note = (
        "Cost: each run's training wall time (train stage, probes included) and the share of "
        "it the per-layer probes and the landscape probe took, from the runs' own records "
        f"(speed/ in MLflow). In all: {runs} runs, "
        f"{sum(row.total_minutes for row in rows):.0f} minutes of training, on "
        f"{'; '.join(devices) or 'an unrecorded device'}"
        + (
            f"; not counted: {left_out} {'run' if left_out == 1 else 'runs'} whose records "
            "predate the cost."
            if left_out
            else "."
        )
    )
    return f"{note}\n\n{_cost_table(rows).markdown()}\n"


def _cost_table(rows: list[CostRow]) -> Table:
    return Table(
        ("group", "variant", "runs", "minutes, total", "minutes a run", "probes", "landscape"),
        "llrrrrr",
        [
            (
                row.group,
                row.variant,
                str(len(row.minutes)),
                f"{row.total_minutes:.0f}",
                _range(row.minutes, "{:.1f}"),
                _range(row.probe_overhead, "{:.1%}"),
                _range(row.landscape_overhead, "{:.1%}") if row.landscape_overhead else "off",
            )
            for row in rows
        ],
    )


def _range(values: list[float], style: str) -> str:
    low, high = style.format(min(values)), style.format(max(values))
    return low if low == high else f"{low}–{high}"


def cost_json(rows: list[CostRow]) -> list[dict[str, Any]]:
    """The rows as JSON: each run's minutes and shares, in the order of the runs."""
    return [
        {
            "group": row.group,
            "variant": row.variant,
            "minutes": row.minutes,
            "probe_overhead": row.probe_overhead,
            "landscape_overhead": row.landscape_overhead,
            "devices": row.devices,
        }
        for row in rows
    ]


def uncosted_runs(summary: Summary) -> int:
    """How many of the summary's runs have records that predate the cost."""
    return sum(not costed(run) for row in summary.rows for run in row.runs)


def costed(run: RunResult) -> bool:
    """Whether the run's record kept what its training cost."""
    return "wall_seconds" in run.cost
