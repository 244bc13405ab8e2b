"""GPU claims, tested without a GPU: processes that each claim one of two (named) GPUs."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from pipeline.training.devices import VISIBLE, claim_gpu, nvidia_gpus


def hold_a_gpu(root: Path, report: Path, seconds: float) -> None:
    """A training process: claim a GPU, record which and when, train for `seconds`, exit."""
    os.environ.pop(VISIBLE, None)
    claim = claim_gpu(root, ["0", "1"], poll_seconds=0.05)
    assert claim is not None
    claimed = time.monotonic()
    time.sleep(seconds)
    released = time.monotonic()
    report.write_text(f"{os.environ[VISIBLE]} {claim.uuid} {claimed} {released}")


def test_three_processes_share_two_gpus_one_each(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")  # fresh processes, as DVC starts them
    reports = [tmp_path / f"worker{number}" for number in range(3)]
    first = [
        context.Process(target=hold_a_gpu, args=(tmp_path, report, 1.5)) for report in reports[:2]
    ]
    for process in first:
        process.start()
    deadline = time.monotonic() + 60
    while not list((tmp_path / ".cache/gpu-locks").glob("gpu-1")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # both first processes hold their GPUs now
    late = context.Process(target=hold_a_gpu, args=(tmp_path, reports[2], 0.1))
    late.start()
    for process in [*first, late]:
        process.join(timeout=60)
        assert process.exitcode == 0
    rows = [report.read_text().split() for report in reports]
    visible = [row[0] for row in rows]
    assert all(row[0] == row[1] for row in rows)  # each sees only the GPU it claimed
    assert sorted(visible[:2]) == ["0", "1"]  # two at once: one GPU each
    # The third waited until one of the first two had exited.
    first_release = min(float(row[3]) for row in rows[:2])
    assert float(rows[2][2]) >= first_release


def test_a_claim_is_released_for_the_next_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VISIBLE, raising=False)
    claim = claim_gpu(tmp_path, ["7"])
    assert claim is not None and os.environ[VISIBLE] == "7"
    claim.release()
    monkeypatch.delenv(VISIBLE)
    again = claim_gpu(tmp_path, ["7"])
    assert again is not None and again.uuid == "7"
    again.release()


def test_the_users_cuda_visible_devices_and_cpu_only_machines_are_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VISIBLE, "3")
    assert claim_gpu(tmp_path, ["0", "1"]) is None
    assert os.environ[VISIBLE] == "3"
    monkeypatch.delenv(VISIBLE)
    assert claim_gpu(tmp_path, []) is None
    assert VISIBLE not in os.environ
    assert not (tmp_path / ".cache").exists()


def test_nvidia_smi_missing_means_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert nvidia_gpus() == []


def test_gpus_are_named_by_uuid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1" = "--query-gpu=uuid" ] || exit 2\n'
        "echo GPU-5f1c2a7e-0000-0000-0000-000000000001\n"
        "echo GPU-5f1c2a7e-0000-0000-0000-000000000000\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nvidia_gpus() == [
        "GPU-5f1c2a7e-0000-0000-0000-000000000001",
        "GPU-5f1c2a7e-0000-0000-0000-000000000000",
    ]
