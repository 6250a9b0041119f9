"""Study storage from a URL: SQLite by default, a journal file for several local processes,
PostgreSQL (or any SQLAlchemy URL) for workers on several machines.

Dead workers: RDB storages run optuna's heartbeat (a trial whose worker stops beating is
failed and retried by ``RetryFailedTrialCallback``); the journal storage has no heartbeat, so
each trial records its worker (host, pid) and a starting worker fails and retries the RUNNING
trials of dead processes on its own host.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from quant import UserError

HEARTBEAT_S = int(os.environ.get("GRS_HEARTBEAT_S", 10))
GRACE_S = int(os.environ.get("GRS_GRACE_S", 30))
MAX_RETRY = 2
_WORKER_KEY = "worker"
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class StorageError(UserError):
    pass


def default_url(study_dir: Path) -> str:
    return f"sqlite:///{study_dir / 'study.db'}"


def check_url(url: str) -> None:
    """A StorageError for a URL no storage understands (checked before any work starts)."""
    if url.startswith("journal:") or url.endswith(".log"):
        return
    if url.split(":", 1)[0].split("+", 1)[0] not in ("sqlite", "postgresql", "mysql"):
        raise StorageError(f"unknown storage URL '{url}': use sqlite:///PATH, "
                           "postgresql://USER@HOST/DB, or journal:PATH")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """``sqlite:///PATH``, ``postgresql://...``, ``journal:PATH`` or a ``*.log`` path."""
    if url.startswith("journal:") or url.endswith(".log"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    check_url(url)
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return _rdb(url)


def _rdb(url: str, attempts: int = 3) -> RDBStorage:
    """Workers starting together on a new database race to create its tables: retry."""
    for i in range(attempts):
        try:
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                  max_retry=MAX_RETRY))
        except Exception as e:  # sqlalchemy/driver errors: wrong host, missing driver, ...
            if i == attempts - 1:
                raise StorageError(f"cannot open storage '{url}': {str(e).splitlines()[0]}") from None
            time.sleep(1 + i)


def mark_worker(trial: optuna.Trial) -> None:
    trial.set_user_attr(_WORKER_KEY, {"host": socket.gethostname(), "pid": os.getpid()})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_workers(study: optuna.Study) -> int:
    """Journal storage only: fail and re-enqueue RUNNING trials whose local worker is gone."""
    if not isinstance(study._storage, JournalStorage):
        return 0
    host, n = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get(_WORKER_KEY)
        if w and w["host"] == host and not _alive(w["pid"]):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs=_retry_attrs(t))
            n += 1
    return n


def _retry_attrs(t: optuna.trial.FrozenTrial) -> dict:
    keep = {k: v for k, v in t.user_attrs.items()
            if k.startswith("warm_") or k in ("plan", "proposal")}
    return {**keep, "retry_of": t.number}
