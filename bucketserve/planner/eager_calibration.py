"""A cost table for a checkpoint not compiled yet: its model built eagerly (no graphs, any batch size),
timed at a spread of sizes. Used by decoder_batch_sizes="auto" when no cost table is given."""
from __future__ import annotations

from dataclasses import replace

import torch

from .calibration import calibrate, contexts_from_trace
from .cost_table import CostTable


def probe_sizes(batch_size: int) -> list[int]:
    """Powers of two below batch_size, and batch_size: enough points for the fit's line in rows."""
    sizes = {batch_size}
    size = 1
    while size < batch_size:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def eager_cost_table(checkpoint, compile_config, model_config, repeats: int = 3) -> CostTable:
    from ..runtime.model_runner import ModelRunner
    from ..runtime.weights import build_model, checkpoint_state, tied_as_stored

    config = replace(compile_config, compiler="eager",
                     decoder_batch_sizes=tuple(sorted(probe_sizes(compile_config.batch_size), reverse=True)))
    model_config = tied_as_stored(model_config, checkpoint.float_tensors())
    device = torch.device(config.device)
    model = build_model(model_config, config, checkpoint_state(checkpoint, config, model_config), device)
    runner = ModelRunner(None, model, config, device)  # eager: reads no directory
    sizes = sorted(config.decoder_batch_sizes)
    held_out = sizes[len(sizes) // 2] if len(sizes) >= 3 else None
    table = calibrate(runner, contexts_from_trace(None, config.max_seq_len), held_out, repeats)
    table.fit["source"] = "eager"
    return table
