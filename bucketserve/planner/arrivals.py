"""Arrival models: traces generated from a request rate and prompt / output length distributions.

A spec a user can type: "poisson:rate=2,count=200,prompt=32-128,output=16-64,seed=0" (requests one by one,
rate per second) or "bursts:rate=0.2,size=1-32,count=200,prompt=..,output=..,seed=0" (bursts arrive at
`rate` per second, each a uniform number of requests in `size` arriving together). Lengths are uniform
integer ranges "lo-hi" (or one number).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .traffic_log import TrafficRecord

KINDS = ("poisson", "bursts")


@dataclass(frozen=True)
class ArrivalModel:
    kind: str  # "poisson" or "bursts"
    rate: float  # requests (poisson) or bursts (bursts) per second
    count: int  # requests in the trace
    prompt: tuple[int, int]  # uniform prompt tokens, inclusive
    output: tuple[int, int]  # uniform output tokens, inclusive
    burst_size: tuple[int, int] = (1, 1)
    seed: int = 0

    def generate(self, start_time: float = 0.0) -> list[TrafficRecord]:
        rng = random.Random(self.seed)
        records: list[TrafficRecord] = []
        clock = start_time
        while len(records) < self.count:
            clock += rng.expovariate(self.rate)
            together = rng.randint(*self.burst_size) if self.kind == "bursts" else 1
            for _ in range(min(together, self.count - len(records))):
                records.append(TrafficRecord(clock, rng.randint(*self.prompt), rng.randint(*self.output)))
        return records


def parse_arrival_model(spec: str) -> ArrivalModel:
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(f"arrival model {spec!r}: the kind must be one of {', '.join(KINDS)} (e.g. "
                         "'poisson:rate=2,count=200,prompt=32-128,output=16-64')")
    fields: dict[str, str] = {}
    for part in filter(None, rest.split(",")):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"arrival model {spec!r}: {part!r} is not name=value")
        fields[name.strip()] = value.strip()
    known = {"rate", "count", "prompt", "output", "size", "seed"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"arrival model {spec!r}: unknown field(s) {unknown}; known: {', '.join(sorted(known))}")
    try:
        rate = float(fields.get("rate", "1"))
        count = int(fields.get("count", "100"))
        model = ArrivalModel(kind, rate, count, _range(fields.get("prompt", "32-128")), _range(fields.get("output", "16-64")),
                             _range(fields.get("size", "1")), int(fields.get("seed", "0")))
    except ValueError as err:
        raise ValueError(f"arrival model {spec!r}: {err}") from None
    if rate <= 0 or count < 1 or model.prompt[0] < 1 or model.output[0] < 1 or model.burst_size[0] < 1:
        raise ValueError(f"arrival model {spec!r}: rate must be > 0, count, prompt, output and size >= 1")
    return model


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    low_value, high_value = int(low), int(high or low)
    if high_value < low_value:
        raise ValueError(f"range {text!r} runs backwards")
    return low_value, high_value


def is_arrival_spec(text: str) -> bool:
    return text.partition(":")[0] in KINDS
