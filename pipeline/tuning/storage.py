"""Where studies live: a journal file (the default) or an SQL database, and how a trial
whose worker died is noticed on each.

SQL storages use Optuna's own heartbeat: each running trial's worker beats every
`interval` seconds, and the next worker to start a trial fails any trial whose last beat,
by the database's clock, is older than `grace` seconds, then queues its learning rate again
(RetryHeartbeatStaleTrialCallback). Optuna's JournalStorage has no heartbeat, so for the
journal the same is written here: a thread records the beat as a trial attribute, and
stale trials are failed and retried with the same Optuna callback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from pipeline.common.errors import PipelineError
from pipeline.config.layout import project_root

log = logging.getLogger(__name__)

JOURNAL_FILE = "optuna.journal"
JOURNAL_PREFIX = "journal:"
HEARTBEAT_ATTR = "heartbeat"
MAX_RETRIES = 2  # a learning rate whose workers died twice is not retried again


@dataclass(frozen=True)
class Heartbeat:
    """How often a worker marks its running trial alive, and when a silent one is stale."""

    interval_seconds: int = 30
    grace_seconds: int = 300


def storage_url(configured: str | None, root: Path | None = None) -> str:
    """The storage to use; relative files (journal or SQLite) are anchored at `root`, by
    default the project root.

    Anchoring at `project_root()` (DVC_ROOT under `dvc exp run`) puts every experiment,
    queued or not, and every local worker on the same study.
    """
    root = root or project_root()
    if configured is None:
        return f"{JOURNAL_PREFIX}{root / JOURNAL_FILE}"
    if configured.startswith(JOURNAL_PREFIX):
        path = Path(configured.removeprefix(JOURNAL_PREFIX)).expanduser()
        return f"{JOURNAL_PREFIX}{path if path.is_absolute() else root / path}"
    if configured.startswith("sqlite:///"):
        path_and_query = configured.removeprefix("sqlite:///")
        if path_and_query and not path_and_query.startswith(("/", ":memory:")):
            return f"sqlite:///{root / path_and_query}"
    if configured.startswith("postgresql://"):
        # SQLAlchemy's default PostgreSQL driver is psycopg2; the project installs psycopg 3.
        return "postgresql+psycopg://" + configured.removeprefix("postgresql://")
    return configured


def describe_storage(url: str) -> str:
    """The storage as it may be shown and logged: a journal's path, a URL without password."""
    if url.startswith(JOURNAL_PREFIX):
        return url.removeprefix(JOURNAL_PREFIX)
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "<unparsable storage URL>"


def storage_kind(url: str) -> str:
    """`journal`, or the database behind an SQLAlchemy URL (`sqlite`, `postgresql`, ...)."""
    if url.startswith(JOURNAL_PREFIX):
        return "journal"
    try:
        return sqlalchemy.engine.make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        return "unknown"


def check_journal(path: Path) -> None:
    """Raise, naming the first line that is not JSON and the two ways out, if there is one."""
    if not path.is_file():
        return
    lines = path.read_bytes().splitlines()
    for index, line in enumerate(lines):
        try:
            json.loads(line)
        except ValueError:
            raise corrupt_journal(path, index + 1, len(lines), line) from None


def corrupt_journal(path: Path, number: int, total: int, line: bytes) -> PipelineError:
    """What is wrong with the journal, and the two ways out."""
    keep = number - 1
    return PipelineError(
        f"the Optuna journal {path} is corrupt: line {number} of {total} is not JSON "
        f"({line[:40]!r}), as a crash or a full disk can leave. Keep its {keep} readable "
        f"line(s) with `cp {path} {path}.bak && head -n {keep} {path}.bak > {path}` and rerun "
        "(the study continues from them), or start a new study in another file with "
        "tune.storage: journal:<new file>"
    )


def open_storage(url: str, heartbeat: Heartbeat | None = None) -> BaseStorage:
    """Open (creating if needed) a journal file or an SQLAlchemy database as Optuna storage."""
    shown = describe_storage(url)
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url.removeprefix(JOURNAL_PREFIX))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The default symlink lock serialises appends between local processes, and it
            # is what the `optuna` CLI and optuna-dashboard use when they open this file.
            # Optuna replays the journal lazily and fails on a line that is not JSON with a
            # bare JSONDecodeError: checked here first, to name the line and the way out.
            check_journal(path)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as error:
            raise PipelineError(
                f"cannot open the Optuna journal {shown}: {error.strerror}; fix the folder's "
                "permissions or point tune.storage elsewhere"
            ) from error
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if storage_kind(url) == "sqlite":
        # Several local workers write to one file: wait for a lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        return _rdb_storage(url, engine_kwargs, heartbeat or Heartbeat())
    except ImportError as error:
        raise PipelineError(
            f"no database driver for the Optuna storage {shown} ({error}); install it into "
            "the environment (PostgreSQL: psycopg[binary])"
        ) from error
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PipelineError(
            f"Optuna storage {shown} is not usable ({first_line}); check tune.storage or "
            "--storage, that the database server is up, and the password (PGPASSWORD or "
            "~/.pgpass, never in params.yaml)"
        ) from error


def _rdb_storage(
    url: str, engine_kwargs: dict[str, Any], heartbeat: Heartbeat, retries: int = 4
) -> RDBStorage:
    """RDBStorage with Optuna's heartbeat, retried while another worker is creating the same
    fresh database's tables (workers started together on an empty PostgreSQL race to)."""
    options: dict[str, Any] = {
        "engine_kwargs": engine_kwargs,
        "heartbeat_interval": heartbeat.interval_seconds,
        "grace_period": heartbeat.grace_seconds,
        "heartbeat_stale_trial_callback": retry_stale_trial(),
    }
    for attempt in range(1, retries + 1):
        try:
            return _experimental(RDBStorage, url, **options)
        except sqlalchemy.exc.SQLAlchemyError as error:
            if "already exists" not in str(error):
                raise
            log.info("another worker is creating the Optuna tables; retrying in %d s", attempt)
            time.sleep(attempt)
    return _experimental(RDBStorage, url, **options)


def retry_stale_trial() -> RetryHeartbeatStaleTrialCallback:
    """Optuna's callback that queues a stale trial's learning rate again, at most twice."""
    return _experimental(RetryHeartbeatStaleTrialCallback, max_retry=MAX_RETRIES)


def _experimental(make: Any, *args: Any, **kwargs: Any) -> Any:
    """`make(...)` without Optuna's ExperimentalWarning (the heartbeat API carries one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return make(*args, **kwargs)


def has_own_heartbeat(storage: BaseStorage) -> bool:
    """Whether Optuna itself beats and fails stale trials on this storage (SQL storages)."""
    return isinstance(storage, RDBStorage)


@contextlib.contextmanager
def journal_heartbeat(
    trial: optuna.Trial, heartbeat: Heartbeat, storage: BaseStorage
) -> Iterator[None]:
    """On a journal, mark `trial` alive from a background thread until the block ends."""
    if has_own_heartbeat(storage):
        yield
        return

    def beat() -> None:
        trial.set_user_attr(HEARTBEAT_ATTR, time.time())

    with _beating(beat, heartbeat.interval_seconds, trial.number):
        yield


@contextlib.contextmanager
def trial_heartbeat(
    trial: optuna.Trial, heartbeat: Heartbeat, storage: BaseStorage
) -> Iterator[None]:
    """Mark `trial` alive until the block ends, on any storage: on SQL storages as Optuna's
    `Study.optimize` does (its `record_heartbeat`), for a trial claimed without it (a grid's
    cell); on a journal, with the journal's beat."""
    if not isinstance(storage, RDBStorage):
        with journal_heartbeat(trial, heartbeat, storage):
            yield
        return
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(trial.study.study_name), trial.number
    )
    with _beating(
        lambda: storage.record_heartbeat(trial_id), heartbeat.interval_seconds, trial.number
    ):
        yield


@contextlib.contextmanager
def _beating(beat: Callable[[], None], interval_seconds: float, number: int) -> Iterator[None]:
    """Call `beat` now and every `interval_seconds` from a background thread, until the block
    ends."""
    stop = threading.Event()

    def safe_beat() -> None:
        try:
            beat()
        except Exception as error:  # a missed beat is harmless; a dead worker stops them all
            log.warning("trial %d: heartbeat not recorded (%s)", number, error)

    def run() -> None:
        while not stop.wait(interval_seconds):
            safe_beat()

    safe_beat()
    thread = threading.Thread(target=run, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_journal_trials(
    study: optuna.Study, storage: BaseStorage, heartbeat: Heartbeat
) -> None:
    """On a journal, fail the running trials whose heartbeat stopped, and retry their rates.

    What `optuna.storages.fail_stale_trials` does for SQL storages; this clock is the
    worker's, so the workers sharing a journal must keep their clocks in step.
    """
    if has_own_heartbeat(storage):
        return
    now = time.time()
    retry = retry_stale_trial()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        silent = now - last_seen(trial)
        if silent <= heartbeat.grace_seconds:
            continue
        log.warning(
            "trial %d has shown no sign of life for %.0f s (its worker died?): failing it, "
            "and queueing its learning rate again",
            trial.number,
            silent,
        )
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker failed it first, and retried it
        retry(study, study.get_trials(deepcopy=False)[trial.number])


def last_seen(trial: FrozenTrial) -> float:
    """When a trial last showed a sign of life (Unix time): its heartbeat or its start."""
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if isinstance(beat, int | float):
        return float(beat)
    return trial.datetime_start.timestamp() if trial.datetime_start else 0.0
