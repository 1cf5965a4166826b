"""The exact search: the set of at most K decoder batch sizes (batch_size always among them) that
minimises the expected decode time of a live-rows distribution, optionally under a budget.

Sizes sorted ascending s_1 < ... < s_k = batch_size split the live rows into runs (s_{i-1}, s_i], each
served by s_i; the total time is a sum over runs, so best[k][j] (the best k sizes ending at j) is the best
best[k-1][i] plus the run (i, j]: dynamic programming over sizes 1..batch_size, exact, O(K * batch_size^2).
With a budget (compile seconds or graph bytes, additive over graphs) each state keeps every pair
(spent, seconds) that no other pair beats on both: still exact, since a dominated pair can never end
a better set.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .cost_model import CostModel
from .live_rows import LiveRows


@dataclass(frozen=True)
class Choice:
    sizes: tuple[int, ...]  # descending, as CompileConfig holds them
    seconds: float  # expected total decode seconds of the distribution's steps
    spent: float = 0.0  # the budgeted resource the set uses (0 without a budget)


def step_costs(distribution: LiveRows, cost: CostModel) -> Callable[[int, int], float]:
    """cost(batch, live): one step's seconds with `live` rows on decoder `batch`, at the distribution's context."""
    return lambda batch, live: cost.step_seconds(batch, live, distribution.context_at(live))


def expected_seconds(sizes, distribution: LiveRows, cost: CostModel) -> float:
    """Total decode seconds of the distribution's steps on decoders `sizes` (each step on the smallest >= rows)."""
    ordered = sorted(sizes)
    step = step_costs(distribution, cost)
    total = 0.0
    for live, count in distribution.steps.items():
        if count:
            batch = next((s for s in ordered if s >= live), None)
            if batch is None:
                raise ValueError(f"{live} live rows do not fit the decoders {sorted(sizes, reverse=True)}")
            total += count * step(batch, live)
    return total


def best_sizes(distribution: LiveRows, cost: CostModel, batch_size: int, max_decoders: int,
               graph_cost: Callable[[int], float] | None = None, budget: float | None = None) -> Choice:
    """The optimal set; graph_cost(size) and budget bound the sum over the chosen sizes when given."""
    if isinstance(max_decoders, bool) or not isinstance(max_decoders, int) or max_decoders < 1:
        raise ValueError(f"max_decoders must be an integer >= 1, got {max_decoders!r}: the largest decoder "
                         "(batch_size) is always compiled")
    if distribution.max_rows > batch_size:
        raise ValueError(f"the distribution has steps with {distribution.max_rows} live rows, more than batch_size "
                         f"{batch_size}; plan for batch_size >= {distribution.max_rows}")
    if (graph_cost is None) != (budget is None):
        raise ValueError("a budget needs both graph_cost and budget")
    price = graph_cost or (lambda size: 0.0)
    step = step_costs(distribution, cost)
    weight = [0.0] * (batch_size + 1)
    for live, count in distribution.steps.items():
        weight[live] += count

    def run_seconds(low: int, high: int) -> float:  # rows low+1 .. high, all on decoder `high`
        return sum(weight[n] * step(high, n) for n in range(low + 1, high + 1) if weight[n])

    # labels[j]: Pareto pairs for sets whose largest size is j, as (spent, seconds, sizes ascending).
    labels: list[list[tuple[float, float, tuple[int, ...]]]] = [[] for _ in range(batch_size + 1)]
    for j in range(1, batch_size + 1):
        labels[j] = _pareto([(price(j), run_seconds(0, j), (j,))], budget)
    best_full = list(labels[batch_size])
    for _ in range(2, min(max_decoders, batch_size) + 1):
        grown: list[list[tuple[float, float, tuple[int, ...]]]] = [[] for _ in range(batch_size + 1)]
        for j in range(2, batch_size + 1):
            extended = [(spent + price(j), seconds + run_seconds(i, j), sizes + (j,))
                        for i in range(1, j) for spent, seconds, sizes in labels[i]]
            grown[j] = _pareto(extended, budget)
        labels = grown
        best_full += labels[batch_size]
    if not best_full:
        raise ValueError(f"no set of decoders fits the budget {budget:g}: decoder {batch_size} alone needs "
                         f"{price(batch_size):g}; raise the budget")
    spent, seconds, sizes = min(best_full, key=lambda label: (label[1], len(label[2]), label[2]))
    return Choice(tuple(sorted(sizes, reverse=True)), seconds, spent)


def _pareto(labels, budget: float | None):
    """The labels within budget that no other label beats on both spent and seconds."""
    kept, lowest = [], float("inf")
    for label in sorted((lab for lab in labels if budget is None or lab[0] <= budget * (1 + 1e-12)),
                        key=lambda lab: (lab[0], lab[1], len(lab[2]))):
        if label[1] < lowest:
            kept.append(label)
            lowest = label[1]
    return kept
