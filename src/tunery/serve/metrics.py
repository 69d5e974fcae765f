"""`GET /metrics`: Prometheus text with requests, tokens, queue depth, batch sizes and latencies.

Each server has its own registry (prometheus_client's default one is global to the process, and tests
run several servers in one process).
"""

from __future__ import annotations

from tunery._deps import require

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The figures a server exports; every method may be called from any thread."""

    def __init__(self):
        prom = require("prometheus_client", extra="serve", package="prometheus-client")
        self._prom = prom
        prom.disable_created_metrics()  # the *_created series only repeat the start time for every label
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("tunery_requests", "HTTP requests answered, by route and status code",
                                     ["route", "code"], registry=r)
        self.prompt_tokens = prom.Counter("tunery_prompt_tokens", "Prompt tokens of admitted requests",
                                          ["model"], registry=r)
        self.completion_tokens = prom.Counter("tunery_completion_tokens", "Tokens generated", ["model"], registry=r)
        self.rejected = prom.Counter("tunery_rejected", "Requests refused before generation, by reason",
                                     ["reason"], registry=r)
        self.ended = prom.Counter("tunery_sequences_ended", "Sequences ended, by reason (stop, length, "
                                  "cancelled: the client went away, error)", ["reason"], registry=r)
        self.queue_depth = prom.Gauge("tunery_queue_depth", "Sequences waiting for a decoding slot", registry=r)
        self.running = prom.Gauge("tunery_running_sequences", "Sequences decoding now", registry=r)
        self.latency = prom.Histogram("tunery_request_latency_seconds", "Time from request to last token",
                                      ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = prom.Histogram("tunery_time_to_first_token_seconds", "Time from request to first token",
                                   ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = prom.Histogram("tunery_decode_batch_rows", "Rows in each decode pass",
                                         buckets=ROW_BUCKETS, registry=r)
        self.prefill_rows = prom.Histogram("tunery_prefill_batch_rows", "Prompts in each prefill pass",
                                           buckets=ROW_BUCKETS, registry=r)
        self.step_seconds = prom.Histogram("tunery_step_seconds", "Time of one engine step (prefill + decode)",
                                           buckets=LATENCY_BUCKETS, registry=r)

    def step(self, stats, seconds: float) -> None:
        if stats.decode_rows:
            self.batch_rows.observe(stats.decode_rows)
        if stats.prefill_rows:
            self.prefill_rows.observe(stats.prefill_rows)
        self.step_seconds.observe(seconds)
        for seq in stats.finished:
            self.ended.labels(reason=seq.finish_reason).inc()

    def load(self, queued: int, running: int) -> None:
        self.queue_depth.set(queued)
        self.running.set(running)

    def answered(self, route: str, code: int) -> None:
        self.requests.labels(route=route, code=str(code)).inc()

    def render(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
