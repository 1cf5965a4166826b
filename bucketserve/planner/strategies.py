"""The fixed strategies a plan is compared with, as vllm-rbln names them: from batch_size down, at most
`limit` sizes, never below min_size; exponential divides by `step` each time, linear subtracts it."""
from __future__ import annotations

from .cost_model import CostModel
from .live_rows import LiveRows
from .search import expected_seconds


def exponential(batch_size: int, limit: int, step: int = 2, min_size: int = 1) -> tuple[int, ...]:
    if step < 2:
        raise ValueError(f"an exponential strategy divides by step >= 2, got {step}")
    sizes = [batch_size]
    while len(sizes) < limit and sizes[-1] // step >= min_size:
        sizes.append(sizes[-1] // step)
    return tuple(sorted(set(sizes), reverse=True))


def linear(batch_size: int, limit: int, step: int, min_size: int = 1) -> tuple[int, ...]:
    if step < 1:
        raise ValueError(f"a linear strategy subtracts step >= 1, got {step}")
    sizes = [batch_size]
    while len(sizes) < limit and sizes[-1] - step >= min_size:
        sizes.append(sizes[-1] - step)
    return tuple(sorted(set(sizes), reverse=True))


def fixed_strategies(batch_size: int, limit: int) -> dict[str, tuple[int, ...]]:
    """Every step each strategy can take with `limit` graphs (the user would pick one by hand)."""
    found: dict[str, tuple[int, ...]] = {}
    for step in range(2, batch_size + 1):
        found.setdefault(f"exponential step {step}", exponential(batch_size, limit, step))
    for step in range(1, batch_size):
        found.setdefault(f"linear step {step}", linear(batch_size, limit, step))
    return found


def best_fixed(kind: str, distribution: LiveRows, cost: CostModel, batch_size: int, limit: int) -> tuple[str, tuple[int, ...]]:
    """The best step of one strategy ("exponential" or "linear") for this traffic: the fairest baseline."""
    candidates = {name: sizes for name, sizes in fixed_strategies(batch_size, limit).items() if name.startswith(kind)}
    if not candidates:
        raise ValueError(f"unknown strategy {kind!r}; choose exponential or linear")
    return min(candidates.items(), key=lambda item: expected_seconds(item[1], distribution, cost))
