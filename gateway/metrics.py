"""Prometheus metrics, one registry per app (no globals), with bounded label sets.

With `--workers N` every worker keeps its metrics in files of the group's run folder (prometheus_client's
multiprocess mode, a process-wide switch each worker throws once, before its app exists) and any worker's
scrape renders the whole group from them: see `WorkerGroup`. A single process is untouched by it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
MAX_ANSWERED_MODELS = 100  # names beyond the configured ones that an upstream answered, kept as labels
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # where prometheus_client's multiprocess mode keeps its files


class LoopValue:
    """A metric's value in a single process, where only the event loop's thread steps metrics.

    prometheus_client's own (`MutexValue`) takes a lock at every step of every counter and histogram bucket,
    which costs more than the step: a call makes four. A worker group keeps its values in the group's files
    instead (see `WorkerGroup.join`).
    """

    _multiprocess = False
    __slots__ = ("_exemplar", "_value")

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        self._value = 0.0
        self._exemplar: object = None

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: object) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> object:
        return self._exemplar


def keep_values_in_the_loop() -> None:
    """Make the metrics made from now on `LoopValue`s: once, in a process that serves alone (no worker group),
    before its app exists. A process-wide switch, as the group's is."""
    values.ValueClass = LoopValue


@dataclass(frozen=True)
class WorkerGroup:
    """The processes of `serve --workers N`, sharing a run folder: metric files and a pid file per worker.

    The supervisor makes the folder before forking and removes it at exit. Each worker's counters and
    histograms are files named by its pid; they stay when it dies, so a scrape of any worker adds up the
    whole group, restarted workers included. Gauges of what is live (open streams, calls in flight) drop
    with their worker.
    """

    folder: Path
    supervisor: int
    workers: int
    slot: int = -1  # which worker this process is; -1 in the supervisor

    @classmethod
    def create(cls, workers: int) -> WorkerGroup:
        """A fresh run folder, named in the environment the workers inherit."""
        folder = Path(tempfile.mkdtemp(prefix="open-llm-proxy-"))
        os.environ[MULTIPROC_ENV] = str(folder)  # prometheus_client names its files from it
        return cls(folder, os.getpid(), workers)

    def join(self, slot: int) -> WorkerGroup:
        """Make a freshly forked worker a member: call it before the worker's app (and metrics) is built."""
        # prometheus_client picks where a metric's values live when the metric is made, from this class. By
        # default it asks the pid at every sample, a system call, to notice a fork: a worker never forks.
        pid = os.getpid()
        values.ValueClass = values.MultiProcessValue(lambda: pid)
        path = self._pid_file(slot)
        path.with_suffix(".tmp").write_text(str(pid))
        path.with_suffix(".tmp").replace(path)  # a sibling reading it sees the old pid or the new, whole
        return replace(self, slot=slot)

    def bury(self, pid: int) -> None:
        """A worker died: its live gauges go; its counts stay."""
        with contextlib.suppress(OSError):  # the supervisor must outlive a folder removed under it
            mark_process_dead(pid, str(self.folder))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def describe(self) -> dict[str, object]:
        """The group as /health shows it: the supervisor, the workers configured and alive, this worker."""
        alive = []
        for slot in range(self.workers):
            with contextlib.suppress(OSError, ValueError):  # a worker being replaced
                pid = int(self._pid_file(slot).read_text())
                os.kill(pid, 0)
                alive.append(pid)
        return {
            "supervisor_pid": self.supervisor,
            "configured": self.workers,
            "alive": len(alive),
            "pids": alive,
            "slot": self.slot,
        }

    def _pid_file(self, slot: int) -> Path:
        return self.folder / f"worker-{slot}.pid"


@dataclass(frozen=True)
class GroupFiles:
    """A collector of the metric files of a group's run folder: every worker's, dead ones' counts included."""

    folder: Path

    def collect(self) -> Iterable[Metric]:
        return MultiProcessCollector.merge(list(self._files()), accumulate=True)

    def _files(self) -> Iterator[str]:
        for path in self.folder.glob("*.db"):
            # Skipped: a file a worker is creating this instant (still empty, so it holds nothing yet; reading
            # it would fail the scrape), and a dead worker's live gauges, removed since the glob.
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_size:
                    yield str(path)


class Metrics:
    """The gateway's counters, histograms and gauges.

    A model label names a model this config serves (its exact ids), or one of the first
    MAX_ANSWERED_MODELS other names an upstream answered successfully for an authenticated caller (a prefix
    or the default provider serves those); any other name a client sends is counted as "other". So no
    value a client made up becomes a label, and made-up names cannot push real models out.
    """

    def __init__(self, served_models: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Proxied calls answered", ["provider", "model", "status"], registry=r
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Whole call duration, to the last byte",
            ["provider", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "gateway_time_to_first_chunk_seconds",
            "Time until the first upstream body bytes",
            ["provider", "model"],
            buckets=TTFB_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Failed upstream attempts", ["provider", "reason"], registry=r
        )
        self.retries = Counter(
            "gateway_upstream_retries", "Upstream attempts retried", ["provider"], registry=r
        )
        self.open_streams = Gauge(
            "gateway_open_streams",
            "Streams being relayed now",
            ["provider", "model"],
            registry=r,
            multiprocess_mode="livesum",  # the multiprocess modes apply only in a worker group
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests", "Calls being handled now", registry=r, multiprocess_mode="livesum"
        )
        self.stream_ends_waiting = Gauge(
            "gateway_stream_ends_waiting",
            "Streams whose upstream answer ended, their handlers waiting for a turn (a burst of ends)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.client_connections = Gauge(
            "gateway_client_connections",
            "Client connections open now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_closed_idle = Counter(
            "gateway_client_connections_closed_idle",
            "Idle client connections closed to take in a new one, past server.max_connections",
            registry=r,
        )
        self.log_records = Counter("gateway_log_records", "Log records built and written", registry=r)
        self.log_record_failures = Counter(
            "gateway_log_record_failures", "Records that could not be built", registry=r
        )
        self.log_records_not_spooled = Counter(
            "gateway_log_records_not_spooled", "Records kept off the full spool (stdout only)", registry=r
        )
        self.log_records_uploaded = Counter(
            "gateway_log_records_uploaded", "Records shipped to S3", registry=r
        )
        self.log_upload_failures = Counter("gateway_log_upload_failures", "Failed upload rounds", registry=r)
        self.log_spool_bytes = Gauge(
            # every worker measures the whole shared spool: the latest measure is the truth
            "gateway_log_spool_bytes",
            "Bytes waiting in the spool",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.group: WorkerGroup | None = None
        self._shown = r  # what a scrape renders
        self._models: set[str] = set(served_models)
        self._answered = 0
        # Label children looked up once per label set: `labels()` takes a lock and builds a key every time.
        self._call_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._ttfb_children: dict[tuple[str, str], Histogram] = {}
        self._stream_children: dict[tuple[str, str], Gauge] = {}
        self.log_spool_errors = Counter(
            "gateway_log_spool_errors", "Spool writes that failed (records to stdout only)", registry=r
        )
        self.log_task_errors = Counter(
            "gateway_log_task_errors", "Failed steps of the background log task (retried)", registry=r
        )
        # By proxy key name: names come from the config and the environment, so they are few.
        self.key_tokens = Counter(
            "gateway_key_tokens", "Tokens used, as limits count them", ["key"], registry=r
        )
        self.key_cost = Counter("gateway_key_cost_usd", "USD spent, as limits count it", ["key"], registry=r)
        self.limit_refusals = Counter(
            "gateway_limit_refusals", "Calls refused by a limit", ["key", "limit"], registry=r
        )
        self.limit_store_errors = Counter(
            "gateway_limit_store_errors", "Limits store operations that failed", ["operation"], registry=r
        )

    def stream_gauge(self, provider: str, model: str | None) -> Gauge:
        """The open-streams gauge of one provider and model (a stream is an answer the upstream gave)."""
        key = (provider, self.model_label(model, answered=True))
        gauge = self._stream_children.get(key)
        if gauge is None:
            gauge = self._stream_children[key] = self.open_streams.labels(*key)
        return gauge

    def model_label(self, model: str | None, *, answered: bool = False) -> str:
        """The model as a label value: served or answered names (see the class), else "other"."""
        if not model:
            return "none"
        if model in self._models:
            return model
        if answered and self._answered < MAX_ANSWERED_MODELS:
            self._answered += 1
            self._models.add(model)
            return model
        return "other"

    def observe_call(
        self, provider: str, model: str, status: int, seconds: float, ttfb: float | None
    ) -> None:
        """Count one finished call."""
        children = self._call_children.get((provider, model, status))
        if children is None:
            children = (
                self.requests.labels(provider, model, str(status)),
                self.latency.labels(provider, model),
            )
            self._call_children[provider, model, status] = children
        children[0].inc()
        children[1].observe(seconds)
        if ttfb is not None:
            histogram = self._ttfb_children.get((provider, model))
            if histogram is None:
                histogram = self._ttfb_children[provider, model] = self.ttfb.labels(provider, model)
            histogram.observe(ttfb)

    def share(self, group: WorkerGroup) -> None:
        """Render the whole group from its files (this process joined it before these metrics were made)."""
        self.group = group
        self._shown = CollectorRegistry()
        self._shown.register(GroupFiles(group.folder))

    def render(self) -> bytes:
        return generate_latest(self._shown)
