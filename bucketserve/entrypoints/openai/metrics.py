"""Prometheus metrics for one server, in a registry of its own (several servers can share a process).

Counts that the engine already keeps (decode steps per decoder, padding rows, queues, KV blocks, prefix-cache
queries and hits) are read
from the engine thread's latest stats snapshot at scrape time rather than counted twice; the rest
(latencies, token counts) are observed as the engine thread reports them.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ...engine.async_engine import AsyncLLMEngine, EngineObserver
from ...planner.traffic_log import TrafficLogWriter, record_from_output

PREFIX = "bucketserve"
STEP_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics(EngineObserver):
    def __init__(self, traffic_log: str | None = None):
        # `serve --traffic-log FILE`: one line per finished request, the trace the planner replays.
        self.traffic_log = TrafficLogWriter(traffic_log) if traffic_log else None
        self.registry = CollectorRegistry()
        self.step_latency = Histogram(f"{PREFIX}_step_latency_seconds", "Wall time of one engine step (prefills + one decode)",
                                      buckets=STEP_LATENCY_BUCKETS, registry=self.registry)
        self.time_to_first_token = Histogram(f"{PREFIX}_time_to_first_token_seconds", "From arrival to the first generated token",
                                             buckets=TTFT_BUCKETS, registry=self.registry)
        self.prompt_token_count = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens of requests the engine accepted",
                                          registry=self.registry)
        self.generation_token_count = Counter(f"{PREFIX}_generation_tokens", "Tokens generated", registry=self.registry)

    def watch(self, engine: AsyncLLMEngine) -> None:
        self.registry.register(_EngineStatsCollector(engine))

    # EngineObserver: called on the engine thread.
    def step_finished(self, seconds: float) -> None:
        self.step_latency.observe(seconds)

    def first_token(self, seconds_since_arrival: float) -> None:
        self.time_to_first_token.observe(seconds_since_arrival)

    def prompt_tokens(self, count: int) -> None:
        self.prompt_token_count.inc(count)

    def generation_tokens(self, count: int) -> None:
        if count > 0:
            self.generation_token_count.inc(count)

    def request_finished(self, output) -> None:
        if self.traffic_log is not None:
            self.traffic_log.append(record_from_output(output))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineStatsCollector:
    """Turns the engine thread's latest get_stats() snapshot into metrics at scrape time."""

    def __init__(self, engine: AsyncLLMEngine):
        self.engine = engine

    def describe(self):
        return []  # computed at scrape time; nothing to check at registration

    def collect(self):
        stats = self.engine.stats  # one immutable snapshot: every value below comes from the same step
        yield _gauge("num_requests_running", "Sequences in the running batch (a request with n=k counts k)", stats["num_running"])
        yield _gauge("num_requests_waiting", "Sequences waiting to be scheduled", stats["num_waiting"])
        yield _gauge("kv_cache_free_blocks", "KV cache blocks free", stats["free_blocks"])
        yield _gauge("kv_cache_usable_blocks", "KV cache blocks that can be handed out (all but the padding block)",
                     stats["usable_blocks"])
        steps = CounterMetricFamily(f"{PREFIX}_decode_steps", "Decode steps run on each compiled decoder",
                                    labels=["decoder_batch_size"])
        for batch_size, count in sorted(stats["decode_steps_per_decoder"].items()):
            steps.add_metric([str(batch_size)], count)
        yield steps
        yield _live_rows_histogram(stats["live_rows"], max(stats["decode_steps_per_decoder"]))
        yield CounterMetricFamily(f"{PREFIX}_padding_rows", "Padding rows run to fill decoder batches",
                                  value=stats["padded_rows"])
        # vLLM's prefix-cache counters, in tokens: prompt tokens looked up, and those found cached.
        yield CounterMetricFamily(f"{PREFIX}_prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                                  value=stats["prefix_cache_queries"])
        yield CounterMetricFamily(f"{PREFIX}_prefix_cache_hits", "Prompt tokens found in the prefix cache",
                                  value=stats["prefix_cache_hits"])


def _live_rows_histogram(live_rows: dict[int, int], batch_size: int) -> HistogramMetricFamily:
    """One bucket per row count 1..batch_size, so the planner reads the exact distribution back."""
    buckets, seen = [], 0
    for rows in range(1, batch_size + 1):
        seen += live_rows.get(rows, 0)
        buckets.append((str(float(rows)), seen))
    buckets.append(("+Inf", seen))
    total_rows = sum(rows * count for rows, count in live_rows.items())
    histogram = HistogramMetricFamily(f"{PREFIX}_decode_live_rows", "Live rows (before padding) of each decode step")
    histogram.add_metric([], buckets, sum_value=total_rows)
    return histogram


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)
