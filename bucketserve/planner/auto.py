"""decoder_batch_sizes="auto": the compile path calls resolve_auto_decoder_batch_sizes first, and gets the
options back with a concrete list (and the plan to record in the manifest), before the normal validation.

    from_pretrained(ckpt, export=True, batch_size=32, decoder_batch_sizes="auto",
                    traffic="traffic.jsonl", max_decoders=3, cost_table="dir/bucketserve_cost_table.json")

traffic: see traffic_source.py. cost_table: a CostTable, its dict or its file; without one, the caller's
`calibrate` measures the checkpoint eagerly (rougher than a compiled directory's table: the compiled
graphs are faster, and only the curve's shape carries over).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..compiler.manifest import record_in_manifest
from ..config import RBLN_PREFIX, build_compile_config, split_rbln_aliases
from .cost_table import CostTable, as_cost_table
from .replay import EngineShape
from .report import plan_report
from .traffic_source import describe_traffic, live_rows_of

AUTO = "auto"
PLAN_OPTIONS = ("traffic", "max_decoders", "cost_table")
DEFAULT_MAX_DECODERS = 3


def resolve_auto_decoder_batch_sizes(options: dict[str, Any], model_config,
                                     calibrate: Callable[[Any], CostTable] | None = None) -> tuple[dict[str, Any], dict | None]:
    """(options with decoder_batch_sizes a list, the plan record) for "auto"; (options, None) otherwise.
    calibrate(compile_config) gives the cost table when options hold none."""
    rest, plan_options = _split_plan_options(options)
    plain = split_rbln_aliases(rest)
    if plain.get("decoder_batch_sizes") != AUTO:
        if plan_options:
            raise ValueError(f"{', '.join(sorted(plan_options))} only apply with decoder_batch_sizes='auto'; "
                             "drop them, or ask for decoder_batch_sizes='auto'")
        return options, None
    if "traffic" not in plan_options:
        raise ValueError("decoder_batch_sizes='auto' needs traffic=: a traffic log (serve --traffic-log), a live-rows "
                         "distribution, or an arrival model such as 'poisson:rate=2,count=200'")
    max_decoders = plan_options.get("max_decoders", DEFAULT_MAX_DECODERS)
    if isinstance(max_decoders, bool) or not isinstance(max_decoders, int) or max_decoders < 1:
        raise ValueError(f"max_decoders must be an integer >= 1, got {max_decoders!r}")
    # Every other option validated as usual, with the largest decoder alone: the plan needs the shapes.
    shape_config = build_compile_config({**plain, "decoder_batch_sizes": None}, model_config)
    if "cost_table" in plan_options:
        costs = as_cost_table(plan_options["cost_table"])
    elif calibrate is not None:
        costs = calibrate(shape_config)
    else:
        raise ValueError("decoder_batch_sizes='auto' needs cost_table= (from `bucketserve plan calibrate`)")
    shape = EngineShape.of(shape_config)
    distribution = live_rows_of(plan_options["traffic"], shape, costs)
    report = plan_report(distribution, costs.decode, shape_config.batch_size, max_decoders)
    record = {
        "inputs": {"traffic": describe_traffic(plan_options["traffic"]), "max_decoders": max_decoders,
                   "distribution": distribution.to_dict(),
                   "cost_table": {k: v for k, v in costs.to_dict().items() if k != "samples"}},
        "prediction": report.to_dict(),
    }
    return {**plain, "decoder_batch_sizes": list(report.planned.sizes)}, record


def _split_plan_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The planner's own options (also spelled rbln_traffic, ..., or inside rbln_config) apart from the rest."""
    rest, planned = {}, {}
    for name, value in options.items():
        key = name.removeprefix(RBLN_PREFIX)
        if key in PLAN_OPTIONS:
            if key in planned:
                raise ValueError(f"option {key!r} was given twice; give it once")
            planned[key] = value
        elif name == "rbln_config" and isinstance(value, dict):
            inner = {k: v for k, v in value.items() if k.removeprefix(RBLN_PREFIX) not in PLAN_OPTIONS}
            for k, v in value.items():
                if k.removeprefix(RBLN_PREFIX) in PLAN_OPTIONS:
                    planned[k.removeprefix(RBLN_PREFIX)] = v
            rest[name] = inner
        else:
            rest[name] = value
    return rest, planned


def record_plan(directory: Path, record: dict) -> None:
    """Add the plan's inputs and prediction to a compiled directory's manifest (sealed again with it)."""
    record_in_manifest(Path(directory), "decoder_plan", record)

