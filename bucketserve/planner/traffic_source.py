"""What a user may give as traffic=, turned into a live-rows distribution: a LiveRows, a dict
({rows: steps} or {"live_rows": ..., "context": ...}), a .json file of one, a scrape of /metrics saved as .prom
(its bucketserve_decode_live_rows histogram), a traffic log (.jsonl, replayed
through the real Scheduler), a list of TrafficRecords, or an arrival model spec ("poisson:..." / "bursts:...")."""
from __future__ import annotations

from pathlib import Path

from .arrivals import is_arrival_spec, parse_arrival_model
from .cost_table import CostTable
from .live_rows import LiveRows, from_dict, from_prometheus, read_distribution
from .replay import EngineShape, replay
from .traffic_log import TrafficRecord, read_traffic_log


def describe_traffic(traffic) -> str:
    if isinstance(traffic, (str, Path)):
        return str(traffic)
    if isinstance(traffic, LiveRows):
        return "a live-rows distribution"
    return f"a {type(traffic).__name__}"


def traffic_records(traffic, max_model_len: int) -> list[TrafficRecord] | None:
    """The trace behind traffic=, or None where it is a distribution already."""
    if isinstance(traffic, list):
        if not traffic:
            raise ValueError("traffic is an empty list of requests; give at least one")
        return traffic
    if isinstance(traffic, str) and is_arrival_spec(traffic):
        return parse_arrival_model(traffic).generate()
    if isinstance(traffic, (str, Path)) and Path(traffic).suffix not in (".json", ".prom"):
        return read_traffic_log(traffic, max_model_len)
    return None


def live_rows_of(traffic, shape: EngineShape, costs: CostTable) -> LiveRows:
    """traffic= as a distribution; a trace is replayed with a decoder of every size 1..batch_size, so that
    the schedule it yields does not depend on any one set being judged."""
    if isinstance(traffic, LiveRows):
        return traffic
    if isinstance(traffic, dict):
        return from_dict(traffic)
    records = traffic_records(traffic, shape.max_model_len)
    if records is None and Path(traffic).suffix == ".prom":
        return from_prometheus(Path(traffic).read_text())
    if records is None:
        return read_distribution(traffic)
    return replay(records, shape, range(1, shape.batch_size + 1), costs.decode, costs.prefill).distribution
