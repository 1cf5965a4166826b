"""A trace replayed through the real Scheduler and BlockManager on a simulated clock.

Each step costs what the cost model says (the decode on the smallest decoder >= live rows, the prefill
per token), the clock advances by it, and the requests that arrived meanwhile join the queue: the live
rows each decode step sees come out as a LiveRows distribution, and the summed step times are the
prediction the benchmark checks against a measured run. Tokens are never computed: a decoding sequence
gets a placeholder token until it has the trace's output length.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ..engine.block_manager import BlockManager
from ..engine.sampling_params import SamplingParams
from ..engine.scheduler import Scheduler
from ..engine.sequence import Sequence
from .cost_model import CostModel
from .live_rows import LiveRows
from .traffic_log import TrafficRecord


@dataclass(frozen=True)
class PrefillCost:
    """seconds = per_call + per_token * tokens computed (cached prompt tokens are not)."""
    per_call: float = 0.0
    per_token: float = 0.0

    def seconds(self, tokens: int) -> float:
        return self.per_call + self.per_token * tokens if tokens else 0.0


@dataclass(frozen=True)
class EngineShape:
    """The engine options the schedule depends on (LLMEngine's defaults for a compiled directory)."""
    batch_size: int
    max_model_len: int
    kvcache_block_size: int
    kvcache_num_blocks: int
    max_num_batched_tokens: int | None = None  # None: max_model_len, as LLM's default

    @classmethod
    def of(cls, compile_config, max_num_batched_tokens: int | None = None) -> EngineShape:
        return cls(compile_config.batch_size, compile_config.max_seq_len, compile_config.kvcache_block_size,
                   compile_config.kvcache_num_blocks, max_num_batched_tokens)


@dataclass
class ReplayResult:
    distribution: LiveRows
    decode_seconds: float  # predicted, on the decoders replayed
    prefill_seconds: float
    num_decode_steps: int
    finish_times: list[float] = field(default_factory=list)  # per record, in the trace's order


def replay(records: list[TrafficRecord], shape: EngineShape, decoder_sizes, decode_cost: CostModel,
           prefill_cost: PrefillCost = PrefillCost()) -> ReplayResult:
    if not records:
        raise ValueError("the trace is empty; a replay needs at least one request")
    longest = max(r.prompt_tokens + max(1, r.output_tokens) for r in records)
    if longest > shape.max_model_len:
        raise ValueError(f"a request in the trace holds {longest} tokens, more than max_model_len {shape.max_model_len}")
    sizes = sorted(set(decoder_sizes))
    if sizes[-1] < shape.batch_size:
        raise ValueError(f"the decoders {sizes} cannot run batch_size {shape.batch_size} rows")
    blocks = BlockManager(shape.kvcache_num_blocks, shape.kvcache_block_size, enable_prefix_caching=False)
    scheduler = Scheduler(shape.batch_size, shape.max_num_batched_tokens or shape.max_model_len, blocks)
    order = sorted(range(len(records)), key=lambda i: records[i].arrival_time)
    start = records[order[0]].arrival_time
    targets: dict[int, int] = {}  # id(seq) -> output tokens to generate
    index_of: dict[int, int] = {}
    finish_times = [0.0] * len(records)
    steps: dict[int, int] = {}
    context_sum: dict[int, float] = {}
    clock, decode_seconds, prefill_seconds, next_arrival = 0.0, 0.0, 0.0, 0
    params = SamplingParams(max_tokens=None, ignore_eos=True)

    def finish(seq: Sequence) -> None:
        seq.finish("length")
        scheduler.finish(seq)
        finish_times[index_of[id(seq)]] = start + clock

    while next_arrival < len(order) or scheduler.num_running or scheduler.num_waiting:
        while next_arrival < len(order) and records[order[next_arrival]].arrival_time - start <= clock:
            i = order[next_arrival]
            record = records[i]
            seq = Sequence(str(i), 0, [1] * record.prompt_tokens, params, None, None)
            targets[id(seq)], index_of[id(seq)] = max(1, record.output_tokens), i
            seq.num_cached_tokens = record.cached_tokens  # prefilled below without them
            scheduler.add(seq)
            next_arrival += 1
        if not scheduler.num_running and not scheduler.num_waiting:
            clock = records[order[next_arrival]].arrival_time - start
            continue
        plan = scheduler.schedule()
        step_seconds = 0.0
        if plan.decodes:
            live = len(plan.decodes)
            context = sum(seq.num_tokens for seq in plan.decodes) / live
            batch = sizes[bisect.bisect_left(sizes, live)]
            seconds = decode_cost.step_seconds(batch, live, context)
            decode_seconds += seconds
            step_seconds += seconds
            steps[live] = steps.get(live, 0) + 1
            context_sum[live] = context_sum.get(live, 0.0) + context
            for seq in plan.decodes:
                seq.num_computed_tokens = seq.num_tokens
                seq.output_token_ids.append(1)
                if len(seq.output_token_ids) >= targets[id(seq)] or seq.num_tokens >= shape.max_model_len:
                    finish(seq)
        if plan.prefills:
            computed = 0
            for chunk in plan.prefills:
                seq = chunk.seq
                skip = max(0, min(seq.num_cached_tokens or 0, chunk.start + chunk.num_tokens) - chunk.start)
                computed += chunk.num_tokens - skip if not seq.output_token_ids else chunk.num_tokens
                seq.num_computed_tokens = chunk.start + chunk.num_tokens
                if chunk.completes_prefill and not seq.output_token_ids:
                    seq.output_token_ids.append(1)  # the prefill samples the first token
                    if len(seq.output_token_ids) >= targets[id(seq)]:
                        finish(seq)
            seconds = prefill_cost.seconds(computed)
            prefill_seconds += seconds
            step_seconds += seconds
        if not plan.decodes and not plan.prefills:
            raise RuntimeError("the replayed scheduler planned an empty step with requests waiting: the KV cache "
                               "cannot hold the trace's longest request")
        clock += step_seconds
    context = {rows: context_sum[rows] / count for rows, count in steps.items()}
    if not steps:
        raise ValueError("the trace produced no decode steps (every request generated one token); nothing to plan")
    return ReplayResult(LiveRows(steps, context), decode_seconds, prefill_seconds, sum(steps.values()), finish_times)
