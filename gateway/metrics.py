"""Prometheus metrics, one registry per app (no globals), with bounded label sets."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
MAX_ANSWERED_MODELS = 100  # names beyond the configured ones that an upstream answered, kept as labels


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
            "gateway_open_streams", "Streams being relayed now", ["provider", "model"], registry=r
        )
        self.in_flight = Gauge("gateway_in_flight_requests", "Calls being handled now", registry=r)
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
        self.log_spool_bytes = Gauge("gateway_log_spool_bytes", "Bytes waiting in the spool", registry=r)
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
