"""MLflow tracking of sweeps: one parent run per sweep, one nested run per trial.

Why this shape: Ray Tune trials run in worker processes, but two processes creating a fresh
sqlite store at once race in its schema migration, and runs opened inside trials stay RUNNING
when a scheduler (ASHA) stops them. So every run is created, written and closed on the
**driver** by a :class:`SweepTracker` (typically from a Tune callback), through an explicit
:class:`mlflow.MlflowClient` -- never MLflow's global tracking URI or active run -- so several
trackers (and tests) can coexist in one process.

Layout in the experiment::

    sweep run   tags dmf_ray.role=sweep, dmf_ray.sweep_id=<id>;   params: the sweep settings
      trial run tags dmf_ray.role=trial, dmf_ray.trial_id=<id>, mlflow.parentRunId=<sweep run>
                params: the trial's config (flattened), metrics per evaluation step,
                final_<metric>, config.yaml, plots/*.png, dmf_ray.end_reason

Resuming a sweep (``Tuner.restore``) re-opens the same runs, never duplicates. MLflow 3 refuses
the plain file store, so local tracking is sqlite with artifacts in ``<dir>/mlartifacts/<experiment>``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from dmf_ray.errors import ConfigError, DataError, UserInputError
from dmf_ray.trainer.plots import as_float

ROLE_TAG = "dmf_ray.role"
SWEEP_TAG = "dmf_ray.sweep_id"
TRIAL_TAG = "dmf_ray.trial_id"
PARENT_TAG = "mlflow.parentRunId"
END_REASON_TAG = "dmf_ray.end_reason"
NONFINITE_PREFIX = "dmf_ray.nonfinite."
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]

# MLflow limits (mlflow.utils.validation): param values 6000 chars, tag values 8000, keys 250.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
_SERVER_SCHEMES = ("http", "https")
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")


# --------------------------------------------------------------------------- tracking URIs


def tracking_uri_for(path_or_uri: str | os.PathLike[str] | None, default_dir: str | os.PathLike[str]) -> str:
    """The MLflow tracking URI to use for a ``--tracking-uri`` value.

    * None -> ``sqlite:///<default_dir>/mlflow.db`` (absolute);
    * ``http(s)://...``, ``sqlite:...`` (and other database URIs) pass through;
    * a path to a database file (``*.db``, ``*.sqlite``, ``*.sqlite3``, or an existing file) ->
      its sqlite URI;
    * a ``file:`` URI, an existing folder or a suffix-less path (``mlruns``) -> ConfigError on
      ``tracking_uri``: that is MLflow's file store, which MLflow 3 refuses.
    """
    if path_or_uri is None:
        return _sqlite_uri(Path(default_dir) / "mlflow.db")
    text = os.fspath(path_or_uri).strip()
    if not text:
        raise ConfigError("tracking_uri", "must not be empty")
    scheme = urllib.parse.urlparse(text).scheme.lower()
    if scheme in _SERVER_SCHEMES:
        if not urllib.parse.urlparse(text).netloc:
            raise ConfigError("tracking_uri", f"{text!r} has no host")
        return text.rstrip("/")
    if scheme in _DB_SCHEMES or any(scheme.startswith(s + "+") for s in _DB_SCHEMES):
        return text
    if scheme == "file":
        raise ConfigError(
            "tracking_uri",
            f"{text!r} is a file store, which MLflow 3 refuses; use a database file such as "
            f"sqlite:///{Path(urllib.parse.urlparse(text).path) / 'mlflow.db'} or a tracking server",
        )
    if scheme and len(scheme) > 1:  # (one letter would be a Windows drive)
        raise ConfigError("tracking_uri", f"unsupported scheme {scheme!r} in {text!r} (use sqlite:///... or http://...)")
    path = Path(text).expanduser()
    if path.is_file() or (not path.is_dir() and path.suffix.lower() in _DB_SUFFIXES):
        return _sqlite_uri(path)
    raise ConfigError(
        "tracking_uri",
        f"{text!r} looks like a folder (MLflow's file store, refused by MLflow 3); give a database file "
        f"such as {path / 'mlflow.db'} or a sqlite:/// or http:// URI",
    )


def _sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.expanduser().resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs or in-memory sqlite)."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:") :]
    if not rest.startswith("///"):
        return None  # sqlite:// (memory) or malformed
    path = rest[3:].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with one line, if ``uri`` cannot be used: a server must answer ``/health``
    within ``timeout_s`` (any HTTP answer counts); a sqlite database's folder must be writable."""
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in _SERVER_SCHEMES:
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s):  # noqa: S310 - http(s) only
                pass
        except urllib.error.HTTPError:
            return  # the server answered; an auth error etc. surfaces with a clear MLflow message
        except (urllib.error.URLError, socket.timeout, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserInputError(f"tracking server {uri} is unreachable: {reason}") from None
        return
    db = sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("tracking_uri", f"cannot create {db.parent} for {uri}: {exc.strerror or exc}") from None
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise ConfigError("tracking_uri", f"{db} is not writable")


def default_artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """``file://<db dir>/mlartifacts/<experiment>`` for a sqlite store; None (server default) else."""
    db = sqlite_path(tracking_uri)
    if db is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment_name).strip("._") or "experiment"
    return (db.parent.resolve() / "mlartifacts" / safe).as_uri()


# --------------------------------------------------------------------------- value helpers


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> dotted keys; lists/tuples/other values -> strings, truncated to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, prefix=name + "."))
            continue
        out[_clean_key(name)] = _truncate(_param_text(value), MAX_PARAM_VALUE)
    return out


def _param_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_param_text(v) for v in value) + "]"
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy / torch scalar
    return str(value)


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"...[{len(text)} chars]"
    return text[: limit - len(marker)] + marker


def _clean_key(key: str) -> str:
    """A valid MLflow param/metric/tag key: allowed characters only, no '..', at most 250 chars."""
    key = re.sub(r"[^\w./\- :]", "_", str(key)).strip() or "_"
    key = re.sub(r"/{2,}", "/", key).strip("/") or "_"
    key = "/".join(p if p not in (".", "..") else "_" for p in key.split("/"))
    return key[:MAX_KEY]


def _check_id(field: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, f"must be a non-empty string, got {value!r}")
    if any(c in value for c in "'\"\\`\n\r"):
        raise ConfigError(field, f"must not contain quotes, backslashes or newlines, got {value!r}")
    return value


# --------------------------------------------------------------------------- tracker


class SweepTracker:
    """Creates and writes the MLflow runs of one sweep, from the driver process.

    Thread-safe for the get-or-create methods (a Tune callback may be called from several
    threads); each instance holds its own client, so trackers on different stores coexist.
    """

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException

        if not experiment_name:
            raise ConfigError("experiment_name", "must not be empty")
        self.tracking_uri = tracking_uri
        check_tracking_server(tracking_uri)
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._lock = threading.RLock()
        self.sweep_id: str | None = None
        self.parent_run_id: str | None = None
        self._last_step: dict[str, int] = {}  # run id -> last eval step (final metrics go there)

        exp = self.client.get_experiment_by_name(experiment_name)
        if exp is None:
            location = artifact_location or default_artifact_location(tracking_uri, experiment_name)
            try:
                self.experiment_id = self.client.create_experiment(experiment_name, artifact_location=location)
            except MlflowException:  # created meanwhile by another process
                exp = self.client.get_experiment_by_name(experiment_name)
                if exp is None:
                    raise
                self.experiment_id = exp.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id

    # ----------------------------------------------------------------- run lookup

    def _search(self, filter_string: str) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=filter_string, max_results=1000,
                order_by=["attributes.start_time ASC"], page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _require_sweep(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("call start_sweep() before creating trial runs")
        return self.parent_run_id

    def _reopen(self, run: Any) -> None:
        if run.info.status != "RUNNING":
            self.client.update_run(run.info.run_id, status="RUNNING")

    def _log_params_once(self, run_id: str, params: Mapping[str, Any], existing: Mapping[str, str]) -> None:
        """Log params not yet on the run (MLflow params are immutable; re-logging a changed value
        fails). ``log_batch`` splits into MLflow's per-request limits itself."""
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, v) for k, v in flatten_params(params).items() if k not in existing])

    # ----------------------------------------------------------------- sweep / trial runs

    def start_sweep(self, sweep_id: str, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None) -> str:
        """Get or create the sweep's parent run (re-opened, not duplicated, on resume); returns its id."""
        _check_id("sweep_id", sweep_id)
        with self._lock:
            found = self._search(f"tags.`{ROLE_TAG}` = 'sweep' and tags.`{SWEEP_TAG}` = '{sweep_id}'")
            extra = {_clean_key(k): _truncate(str(v), MAX_TAG_VALUE) for k, v in (tags or {}).items()}
            if found:
                run = found[0]
                self._reopen(run)
                for key, value in extra.items():
                    self.client.set_tag(run.info.run_id, key, value)
            else:
                run = self.client.create_run(
                    self.experiment_id,
                    run_name=f"sweep-{sweep_id}",
                    tags={**extra, ROLE_TAG: "sweep", SWEEP_TAG: sweep_id},
                )
            self._log_params_once(run.info.run_id, params, run.data.params)
            self.sweep_id = sweep_id
            self.parent_run_id = run.info.run_id
            return run.info.run_id

    def trial_run(self, trial_id: str, params: Mapping[str, Any]) -> str:
        """Get or create the nested run of ``trial_id``; returns its id.

        A FINISHED or KILLED run (Tune does not run those trials again) is returned untouched; a
        RUNNING one (the driver crashed) or a FAILED one (retried) is reopened for the resumed trial.
        """
        _check_id("trial_id", trial_id)
        with self._lock:
            parent = self._require_sweep()
            found = self._search(f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{TRIAL_TAG}` = '{trial_id}'")
            if found:
                done = [r for r in found if r.info.status in ("FINISHED", "KILLED")]
                run = done[0] if done else found[-1]
                if run.info.status in ("FINISHED", "KILLED"):
                    return run.info.run_id
                self._reopen(run)
            else:
                run = self.client.create_run(
                    self.experiment_id,
                    run_name=trial_id,
                    tags={PARENT_TAG: parent, ROLE_TAG: "trial", TRIAL_TAG: trial_id, SWEEP_TAG: self.sweep_id or ""},
                )
            self._log_params_once(run.info.run_id, params, run.data.params)
            return run.info.run_id

    def trial_runs(self) -> dict[str, Any]:
        """trial_id -> mlflow Run of this sweep's trials (a FINISHED run preferred if several)."""
        parent = self._require_sweep()
        out: dict[str, Any] = {}
        for run in self._search(f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{ROLE_TAG}` = 'trial'"):
            tid = run.data.tags.get(TRIAL_TAG)
            if tid is None:
                continue
            if tid not in out or (out[tid].info.status != "FINISHED" and run.info.status == "FINISHED"):
                out[tid] = run
        return out

    # ----------------------------------------------------------------- metrics / artifacts

    def log_eval(self, run_id: str, step: int, metrics: Mapping[str, Any]) -> None:
        """Log ``metrics`` at ``step``; non-finite values are skipped and recorded as tags
        ``dmf_ray.nonfinite.<key>``; non-numeric values (strings, None) are ignored."""
        step = int(step)
        self._last_step[run_id] = max(step, self._last_step.get(run_id, 0))
        self._log_metrics(run_id, step, metrics, prefix="")

    def _log_metrics(self, run_id: str, step: int, metrics: Mapping[str, Any], prefix: str) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        good: list[Metric] = []
        bad: list[RunTag] = []
        for key, raw in metrics.items():
            value = as_float(raw)
            if value is None:
                continue
            name = _clean_key(prefix + str(key))
            if math.isfinite(value):
                good.append(Metric(name, value, now, step))
            else:
                bad.append(RunTag(_clean_key(NONFINITE_PREFIX + name), f"{value} at step {step}"))
        self.client.log_batch(run_id, metrics=good, tags=bad)

    def log_artifacts(self, run_id: str, local_dir: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        local = Path(local_dir)
        if not local.exists():
            raise DataError(local, "no such file or folder to log")
        if local.is_file():
            self.client.log_artifact(run_id, str(local), artifact_path)
        else:
            self.client.log_artifacts(run_id, str(local), artifact_path)

    def log_config(self, run_id: str, config: Mapping[str, Any]) -> None:
        """The resolved config (plain data, e.g. ``TrainConfig.to_dict()``) as the artifact ``config.yaml``."""
        with tempfile.TemporaryDirectory(prefix="dmf_ray_cfg_") as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
            self.client.log_artifact(run_id, str(path))

    def log_figures(self, run_id: str, figures: Mapping[str, str | os.PathLike[str]]) -> None:
        """PNG files as ``plots/<name>.png`` (name = the dict key)."""
        if not figures:
            return
        with tempfile.TemporaryDirectory(prefix="dmf_ray_fig_") as tmp:
            for name, src in figures.items():
                src = Path(src)
                if not src.is_file():
                    raise DataError(src, "figure file does not exist")
                stem = re.sub(r"[^\w.-]+", "_", str(name)).removesuffix(".png") or "figure"
                shutil.copyfile(src, Path(tmp) / f"{stem}.png")
            self.client.log_artifacts(run_id, tmp, "plots")

    # ----------------------------------------------------------------- endings

    def finish_trial(
        self,
        run_id: str,
        status: RunStatus,
        final_metrics: Mapping[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        """Final metrics as ``final_<key>``, ``reason`` as tag ``dmf_ray.end_reason``, terminal status."""
        self._finish(run_id, status, final_metrics, reason, prefix="final_")

    def finish_sweep(self, status: RunStatus, summary_metrics: Mapping[str, Any] | None = None, reason: str | None = None) -> None:
        """Close the parent run with ``status``; ``summary_metrics`` logged as given (e.g. best_fd)."""
        self._finish(self._require_sweep(), status, summary_metrics, reason, prefix="")

    def _finish(self, run_id: str, status: str, metrics: Mapping[str, Any] | None, reason: str | None, prefix: str) -> None:
        if metrics:
            self._log_metrics(run_id, self._last_step.get(run_id, 0), metrics, prefix=prefix)
        if reason:
            one_line = " ".join(str(reason).split())
            self.client.set_tag(run_id, END_REASON_TAG, _truncate(one_line, MAX_TAG_VALUE))
        self.client.set_terminated(run_id, status=status)
