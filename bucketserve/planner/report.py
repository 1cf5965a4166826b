"""A plan and what it is compared with: the chosen set against [batch_size] alone, the exponential set,
the user's own set and the best set of each K = 1..5, in predicted decode time per generated token."""
from __future__ import annotations

from dataclasses import dataclass, field

from .cost_model import CostModel
from .live_rows import LiveRows
from .search import best_sizes, expected_seconds
from .strategies import exponential

COMPARED_K = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Row:
    name: str
    sizes: tuple[int, ...]
    seconds: float  # expected total decode seconds of the distribution
    seconds_per_token: float


@dataclass
class PlanReport:
    batch_size: int
    max_decoders: int
    planned: Row
    rows: list[Row] = field(default_factory=list)  # what it is compared with
    budget: dict | None = None

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def table(self) -> str:
        lines = [f"{'set':<24} {'decoders':<28} {'ms/token':>9} {'vs planned':>10}"]
        for r in [self.planned, *self.rows]:
            ratio = r.seconds / self.planned.seconds if self.planned.seconds else float("nan")
            lines.append(f"{r.name:<24} {str(list(r.sizes)):<28} {1000 * r.seconds_per_token:>9.3f} {ratio:>9.2f}x")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        def one(r: Row) -> dict:
            return {"name": r.name, "sizes": list(r.sizes), "seconds": r.seconds, "seconds_per_token": r.seconds_per_token}

        return {"batch_size": self.batch_size, "max_decoders": self.max_decoders, "planned": one(self.planned),
                "compared": [one(r) for r in self.rows], "budget": self.budget}


def make_row(name: str, sizes, distribution: LiveRows, cost: CostModel) -> Row:
    seconds = expected_seconds(sizes, distribution, cost)
    return Row(name, tuple(sorted(set(sizes), reverse=True)), seconds, seconds / distribution.total_tokens)


def plan_report(distribution: LiveRows, cost: CostModel, batch_size: int, max_decoders: int,
                user_sizes=None, graph_cost=None, budget: float | None = None, budget_name: str | None = None) -> PlanReport:
    choice = best_sizes(distribution, cost, batch_size, max_decoders, graph_cost, budget)
    planned = make_row(f"planned (K<={max_decoders})", choice.sizes, distribution, cost)
    rows = [make_row("batch_size alone", (batch_size,), distribution, cost),
            make_row("exponential", exponential(batch_size, limit=batch_size), distribution, cost)]
    if user_sizes:
        rows.append(make_row("yours", tuple(user_sizes), distribution, cost))
    for k in COMPARED_K:
        if k <= batch_size:
            rows.append(make_row(f"best K={k}", best_sizes(distribution, cost, batch_size, k).sizes, distribution, cost))
    return PlanReport(batch_size, max_decoders, planned, rows,
                      None if budget is None else {"name": budget_name, "limit": budget, "spent": choice.spent})
