"""What each decoder graph costs to have, per batch size: compile seconds, and graph bytes (the size of
its graph package, which loading maps).

Measured for the sizes a directory holds (its manifest's compile_seconds, its graph files' sizes) and
extended to other sizes by a straight line through them, which is what a budget needs to price a set
before compiling it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class GraphCosts:
    compile_seconds: dict[int, float] = field(default_factory=dict)  # measured, per decoder batch size
    graph_bytes: dict[int, float] = field(default_factory=dict)

    def seconds_for(self, batch: int) -> float:
        return _line(self.compile_seconds, batch)

    def bytes_for(self, batch: int) -> float:
        return _line(self.graph_bytes, batch)

    def to_dict(self) -> dict:
        return {"compile_seconds": {str(k): v for k, v in sorted(self.compile_seconds.items())},
                "graph_bytes": {str(k): v for k, v in sorted(self.graph_bytes.items())}}

    @classmethod
    def from_dict(cls, raw: dict) -> GraphCosts:
        return cls({int(k): float(v) for k, v in raw.get("compile_seconds", {}).items()},
                   {int(k): float(v) for k, v in raw.get("graph_bytes", {}).items()})


def _line(measured: dict[int, float], batch: int) -> float:
    if not measured:
        raise ValueError("no graph has been measured: a budget needs a cost table from `bucketserve plan calibrate`")
    if batch in measured:
        return measured[batch]
    if len(measured) == 1:
        return next(iter(measured.values()))
    sizes = np.array(sorted(measured), dtype=float)
    slope, intercept = np.polyfit(sizes, [measured[int(s)] for s in sizes], 1)
    return max(0.0, float(intercept + slope * batch))
