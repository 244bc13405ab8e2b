"""Bad input through the stages' entry points: one row per case of the table in
docs/troubleshooting.md. Each must print one `error:` line naming the problem and the fix,
exit 1 without a traceback, and leave every file exactly as it was. The cases call each
stage's `main(argv)` in this process; two run it as DVC does, `python -m pipeline.<stage>`,
for the exit status and the output of a real process.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import PROJECT_ROOT, Server, edit_params, free_port, project_environment
from tests.sources import class_folder_files, write_binary_release, write_class_folder, write_tar

SOURCE = "cifar10-small.tar.gz"


def run_stage(
    folder: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline.<stage> ...` in `folder`, as DVC runs it."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=folder,
        env=project_environment(env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_in_process(
    folder: Path, module: str, *args: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    """`main([...args])` of `pipeline.<stage>` in this process, from `folder`: its exit status
    and what it printed to stderr."""
    monkeypatch.chdir(folder)
    terminate = signal.getsignal(signal.SIGTERM)  # run_stage turns SIGTERM into Ctrl-C
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            importlib.import_module(module).main(list(args))
        status = 0
    except SystemExit as exit:
        status = int(exit.code or 0)
    finally:
        signal.signal(signal.SIGTERM, terminate)
    return status, stderr.getvalue()


def setting(dotted: str, value: Any) -> Callable[[Path], None]:
    """A spoiler that sets one params.yaml key, creating missing sections."""

    def spoil(folder: Path) -> None:
        def change(values: dict[str, Any]) -> None:
            *sections, key = dotted.split(".")
            for section in sections:
                values = values.setdefault(section, {})
            values[key] = value

        edit_params(folder, change)

    return spoil


def source(write: Callable[[Path], Path]) -> Callable[[Path], None]:
    """A spoiler that points data.source at what `write` creates in the folder."""

    def spoil(folder: Path) -> None:
        setting("data.source", write(folder).name)(folder)

    return spoil


def truncated_archive(folder: Path) -> Path:
    whole = (folder / SOURCE).read_bytes()
    path = folder / "truncated.tar.gz"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def corrupt_archive(folder: Path) -> Path:
    path = folder / "corrupt.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08" + bytes(range(256)) * 8)
    return path


def text_files(folder: Path) -> Path:
    return write_tar(folder / "notes.tar", {"notes/a.txt": b"hello", "notes/b.txt": b"world"})


def large_images(folder: Path) -> Path:
    files = class_folder_files(top="big")
    files["big/train/cat/99999.png"] = _png((64, 64, 3))
    return write_tar(folder / "big.tar", files)


def _png(shape: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros(shape, np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def escaping_member(folder: Path) -> Path:
    files = class_folder_files()
    files["../escape.png"] = _png((32, 32, 3))
    return write_tar(folder / "escape.tar", files)


def link_member(folder: Path) -> Path:
    path = write_class_folder(folder, "tar")
    with tarfile.open(path, "a") as archive:
        info = tarfile.TarInfo("cifar10-small/train/cat/link.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)
    return path


def eleven_classes(folder: Path) -> Path:
    """CIFAR-10's ten class folders and one more, in both splits."""
    files = class_folder_files(top="eleven")
    for split in ("train", "test"):
        files[f"eleven/{split}/unicorn/00001.png"] = _png((32, 32, 3))
    return write_tar(folder / "eleven.tar", files)


def corrupt_journal(folder: Path) -> None:
    """Tuning on, into a journal whose last line a crash cut short."""
    setting("tune.n_trials", 1)(folder)
    (folder / "optuna.journal").write_text('{"op_code": 0, "worker_id": "w", "study_name": "s"\n')


def python_release(folder: Path) -> Path:
    """The layout of cifar-10-python.tar.gz: pickled batches (never unpickled here)."""
    names = ("batches.meta", "data_batch_1", "test_batch", "readme.html")
    return write_tar(
        folder / "cifar-10-python.tar.gz",
        {f"cifar-10-batches-py/{name}": b"\x80\x04N." for name in names},
    )


def pickled_upstream(folder: Path) -> None:
    """The raw dataset rewritten with a pickled object array in place of the images."""
    path = folder / "data/raw/cifar10.npz"
    with np.load(path) as arrays:
        payload = dict(arrays)
    payload["x_train"] = np.array([{"a": 1}], dtype=object)
    np.savez(path, **payload)


def missing_upstream(folder: Path) -> None:
    (folder / "data/raw/cifar10.npz").unlink()


def blocked_output(folder: Path) -> None:
    """A file where the stats' folder should be: writing fails after the arrays are ready."""
    (folder / "blocker").write_text("a file, not a folder")
    setting("paths.normalization_stats", "blocker/stats.json")(folder)


def broken_yaml(folder: Path) -> None:
    (folder / "params.yaml").write_text("train:\n  epochs: [3\n")


def unusable_storage(folder: Path) -> None:
    """Tuning on, into a PostgreSQL server that is not there."""
    setting("tune.n_trials", 1)(folder)
    setting("tune.storage", f"postgresql://optuna@127.0.0.1:{free_port()}/x")(folder)


def unreachable_server() -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}


@dataclass(frozen=True)
class BadInput:
    """One row of the table: how the input is spoiled, the stage run, what the line says."""

    spoil: Callable[[Path], None]
    stage: tuple[str, ...]
    expected: tuple[str, ...]
    env: Callable[[], dict[str, str]] | None = None


FETCH = ("pipeline.fetch",)
NORMALIZE = ("pipeline.normalize",)
TUNE_BN = ("pipeline.tune", "bn")
CASES = {
    "yaml syntax error": BadInput(broken_yaml, FETCH, ("not valid YAML", "line")),
    "params.yaml missing": BadInput(
        lambda folder: (folder / "params.yaml").unlink(), FETCH, ("params.yaml",)
    ),
    "typo in a key": BadInput(
        setting("train.learnig_rate", 0.01), FETCH, ("did you mean 'train.learning_rate'",)
    ),
    "wrong type": BadInput(setting("train.epochs", "ten"), FETCH, ("train.epochs",)),
    "out-of-range value": BadInput(
        setting("data.val_fraction", 1.5), FETCH, ("data.val_fraction",)
    ),
    "unknown variant field": BadInput(
        setting("variants.bn.batch_nrom", True), FETCH, ("variants.bn.batch_nrom",)
    ),
    "unknown variant named": BadInput(
        lambda folder: None, ("pipeline.tune", "resnet"), ("resnet", "params.yaml defines")
    ),
    "repeated seed": BadInput(
        setting("seeds", [7, 7]), FETCH, ("seeds: must not repeat a seed (got [7, 7])",)
    ),
    "an 11th class folder": BadInput(
        source(eleven_classes), FETCH, ("11 classes (unexpected: unicorn)", "remove the other")
    ),
    "corrupt Optuna journal": BadInput(
        corrupt_journal, TUNE_BN, ("optuna.journal is corrupt: line 1 of 1", "head -n 0")
    ),
    "missing source": BadInput(setting("data.source", "nowhere.tar.gz"), FETCH, ("data.source",)),
    "truncated archive": BadInput(source(truncated_archive), FETCH, ("truncated or corrupt",)),
    "corrupt archive": BadInput(source(corrupt_archive), FETCH, ("corrupt",)),
    "wrong checksum": BadInput(lambda folder: None, FETCH, ("md5", "data.md5")),
    "not CIFAR-10": BadInput(source(text_files), FETCH, ("holds no CIFAR-10 images",)),
    "images not 32x32": BadInput(source(large_images), FETCH, ("64×64", "not 32×32")),
    "member escaping the folder": BadInput(source(escaping_member), FETCH, ("unsafe member",)),
    "link member": BadInput(source(link_member), FETCH, ("links are refused",)),
    "python (pickle) release": BadInput(source(python_release), FETCH, ("pickle", "binary")),
    "pickle in an upstream output": BadInput(pickled_upstream, NORMALIZE, ("unreadable",)),
    "missing upstream output": BadInput(missing_upstream, NORMALIZE, ("dvc repro",)),
    "unwritable output path": BadInput(blocked_output, NORMALIZE, ("cannot write",)),
    "unusable Optuna storage": BadInput(unusable_storage, TUNE_BN, ("tune.storage",)),
    "unreachable MLflow server (train)": BadInput(
        lambda folder: None,
        ("pipeline.train", "bn"),
        ("unreachable", "MLFLOW_TRACKING_URI"),
        env=unreachable_server,
    ),
    "unreachable MLflow server (tune)": BadInput(
        setting("tune.n_trials", 1), TUNE_BN, ("MLFLOW_TRACKING_URI",), env=unreachable_server
    ),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with params.yaml, a tiny source, and the outputs of every stage before train."""
    folder = tmp_path_factory.mktemp("prepared")
    shutil.copy2(PROJECT_ROOT / "params.yaml", folder / "params.yaml")
    write_class_folder(folder, "tar.gz", per_class_train=5, per_class_test=1)
    setting("data.source", SOURCE)(folder)
    setting("data.val_fraction", 0.2)(folder)
    for stage in (FETCH, NORMALIZE, TUNE_BN):  # tune.n_trials 0: writes the configured rate
        done = run_stage(folder, *stage)
        assert done.returncode == 0, done.stderr
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def spoiled(case: str, prepared: Path, tmp_path: Path, server: Server) -> Path:
    """A copy of the prepared folder with the case's bad input."""
    bad = CASES[case]
    folder = tmp_path / "project"
    shutil.copytree(prepared, folder)
    if case == "wrong checksum":
        write_binary_release(server.root)
        setting("data.url", f"{server.url}/cifar-10-binary.tar.gz")(folder)
        setting("data.source", "official")(folder)
        setting("paths.download_cache", "cache")(folder)
    bad.spoil(folder)
    return folder


def assert_one_clear_line(bad: BadInput, status: int, stderr: str) -> None:
    assert status == 1, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    for phrase in bad.expected:
        assert phrase in errors[0], errors[0]


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_one_clear_line_and_changes_nothing(
    case: str,
    prepared: Path,
    tmp_path: Path,
    server: Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = CASES[case]
    folder = spoiled(case, prepared, tmp_path, server)
    before = snapshot(folder)
    for name, value in (bad.env() if bad.env else {}).items():
        monkeypatch.setenv(name, value)

    status, stderr = run_in_process(folder, *bad.stage, monkeypatch=monkeypatch)

    assert_one_clear_line(bad, status, stderr)
    after = snapshot(folder)
    assert sorted(after) == sorted(before)
    assert [name for name in before if after[name] != before[name]] == []


@pytest.mark.parametrize("case", ["typo in a key", "unreachable MLflow server (train)"])
def test_bad_input_through_the_command_line(
    case: str, prepared: Path, tmp_path: Path, server: Server
) -> None:
    bad = CASES[case]
    folder = spoiled(case, prepared, tmp_path, server)
    failed = run_stage(folder, *bad.stage, env=bad.env() if bad.env else None)
    assert_one_clear_line(bad, failed.returncode, failed.stderr)


def test_debug_shows_the_traceback(prepared: Path, tmp_path: Path) -> None:
    folder = tmp_path / "project"
    shutil.copytree(prepared, folder)
    missing_upstream(folder)
    failed = run_stage(folder, *NORMALIZE, "--debug")
    assert failed.returncode != 0
    assert "Traceback" in failed.stderr and "PipelineError" in failed.stderr
