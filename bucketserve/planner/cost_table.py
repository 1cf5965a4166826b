"""The cost table: what `bucketserve plan calibrate` measured and fitted, as one JSON file the planner reads.

decode: the fitted CostModel; prefill: PrefillCost; graphs: GraphCosts; fit: how well the decode fit did
(the held-out size, its relative errors, the training errors) so that its error is reported, not hidden;
samples: every measured step.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .cost_model import CostModel, StepSample
from .graph_costs import GraphCosts
from .replay import PrefillCost

COST_TABLE = "bucketserve_cost_table.json"  # its default place: inside the compiled directory it describes


@dataclass
class CostTable:
    decode: CostModel
    prefill: PrefillCost = PrefillCost()
    graphs: GraphCosts = field(default_factory=GraphCosts)
    fit: dict = field(default_factory=dict)
    samples: list[StepSample] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"decode": self.decode.to_dict(),
                "prefill": {"per_call": self.prefill.per_call, "per_token": self.prefill.per_token},
                "graphs": self.graphs.to_dict(), "fit": self.fit,
                "samples": [{"batch": s.batch, "context": s.context, "seconds": s.seconds} for s in self.samples]}

    @classmethod
    def from_dict(cls, raw: dict, where: str = "the cost table") -> CostTable:
        if not isinstance(raw, dict) or "decode" not in raw:
            raise ValueError(f"{where}: expected a cost table with a 'decode' model (a, b, c, floor), as "
                             "`bucketserve plan calibrate` writes")
        try:
            prefill = raw.get("prefill", {})
            return cls(CostModel.from_dict(raw["decode"]), PrefillCost(float(prefill.get("per_call", 0.0)),
                                                                        float(prefill.get("per_token", 0.0))),
                       GraphCosts.from_dict(raw.get("graphs", {})), dict(raw.get("fit", {})),
                       [StepSample(int(s["batch"]), float(s["context"]), float(s["seconds"])) for s in raw.get("samples", [])])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: malformed cost table ({err!r}); recalibrate with `bucketserve plan calibrate`") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def read_cost_table(path: str | Path) -> CostTable:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cost table {path} does not exist; write one with `bucketserve plan calibrate MODEL_DIR`")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    return CostTable.from_dict(raw, str(path))


def as_cost_table(value) -> CostTable:
    """A CostTable, its dict, or a path to its JSON file."""
    if isinstance(value, CostTable):
        return value
    if isinstance(value, dict):
        return CostTable.from_dict(value)
    return read_cost_table(value)
