"""What one decode step costs: seconds = max(floor, a + b*batch + c*live*context), and its fit.

batch: the decoder's rows (live and padding); live: the rows that hold a sequence; context: their mean
context length. Every row pays its share of the weights' multiply (b); only a live row reads its context
(c: the attention kernel reads a padding row's one slot); a is the step's fixed cost (the call, the
sampler). floor: the time below which no step goes however small (reading the weights once from memory).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class CostModel:
    a: float  # seconds per step
    b: float  # seconds per row
    c: float  # seconds per live row per context token
    floor: float = 0.0  # seconds

    def step_seconds(self, batch: int, live: int, context: float) -> float:
        return max(self.floor, self.a + self.b * batch + self.c * live * context)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> CostModel:
        return cls(**{k: float(raw[k]) for k in ("a", "b", "c", "floor") if k in raw})


@dataclass(frozen=True)
class StepSample:
    """One measured decode step: all `batch` rows live at `context` tokens (how calibration times them)."""
    batch: int
    context: float
    seconds: float


def _design(samples: list[StepSample]) -> np.ndarray:
    return np.array([[1.0, s.batch, s.batch * s.context] for s in samples])


def fit_cost_model(samples: list[StepSample]) -> CostModel:
    """Least squares in relative error (a 1 ms step weighs as much as a 100 ms one) of
    max(floor, a + b*rows + c*rows*context), exactly over the floor: each candidate floor (none, or each
    measured time) splits the samples into those it explains and those the plane must; the best pair wins."""
    if len({s.batch for s in samples}) < 2:
        raise ValueError(f"fitting a step cost needs samples at 2 or more batch sizes, got {len(samples)} sample(s) "
                         f"at sizes {sorted({s.batch for s in samples})}")
    seconds = np.array([s.seconds for s in samples])
    if not np.all(np.isfinite(seconds)) or np.any(seconds <= 0):
        raise ValueError("every measured step time must be a finite number of seconds > 0")
    best: tuple[float, CostModel] | None = None
    for floor in [0.0, *sorted(set(seconds.tolist()))]:
        plane = [s for s in samples if s.seconds > floor * 1.0001]
        if len(plane) < 2:
            continue
        model = CostModel(*_plane_fit(plane), floor=floor)
        error = _relative_error(model, samples)
        if best is None or error < best[0]:
            best = (error, model)
    assert best is not None  # floor 0 keeps every sample on the plane
    return best[1]


def _plane_fit(samples: list[StepSample]) -> tuple[float, float, float]:
    """a, b, c >= 0 (a step never gets cheaper with more rows or context): least squares over each subset of
    the three terms, the best whose coefficients are all >= 0, which is the non-negative least-squares fit."""
    design = _design(samples)
    seconds = np.array([s.seconds for s in samples])
    weights = 1.0 / seconds
    best: tuple[float, list[float]] | None = None
    for columns in itertools.chain.from_iterable(itertools.combinations(range(3), k) for k in (1, 2, 3)):
        cols = list(columns)
        coef, *_ = np.linalg.lstsq(design[:, cols] * weights[:, None], seconds * weights, rcond=None)
        if np.any(coef < 0):
            continue
        full = [0.0, 0.0, 0.0]
        for col, value in zip(cols, coef, strict=True):
            full[col] = float(value)
        error = float(np.sum(((design @ np.array(full) - seconds) * weights) ** 2))
        if best is None or error < best[0]:
            best = (error, full)
    assert best is not None  # a alone (the mean, weighted) is never negative
    return best[1][0], best[1][1], best[1][2]


def _relative_error(model: CostModel, samples: list[StepSample]) -> float:
    return float(sum(((model.step_seconds(s.batch, s.batch, s.context) - s.seconds) / s.seconds) ** 2 for s in samples))


def fit_errors(model: CostModel, samples: list[StepSample]) -> list[float]:
    """Each sample's relative error (predicted / measured - 1)."""
    return [model.step_seconds(s.batch, s.batch, s.context) / s.seconds - 1 for s in samples]


def max_abs_error(model: CostModel, samples: list[StepSample]) -> float:
    return max((abs(e) for e in fit_errors(model, samples)), default=math.nan)


def synthetic_samples(model: CostModel, batches, contexts) -> list[StepSample]:
    """Samples a known model would give (tests, and checking a fit by eye)."""
    return [StepSample(b, ctx, model.step_seconds(b, b, ctx)) for b, ctx in itertools.product(batches, contexts)]
