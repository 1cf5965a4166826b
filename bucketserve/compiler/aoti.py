"""Ahead-of-time compilation of one graph with torch.export + AOTInductor, weights left out of the package."""
from __future__ import annotations

from pathlib import Path

import torch

from .graph_specs import GraphSpec

# Weights stay out of each .so: every graph borrows the one set of tensors the runtime loads.
INDUCTOR_CONFIGS = {"aot_inductor.package_constants_in_so": False}


def compile_graph(spec: GraphSpec, package_path: Path) -> None:
    with torch.no_grad():
        exported = torch.export.export(spec.module, spec.example_inputs, dynamic_shapes=spec.dynamic_shapes)
        torch._inductor.aoti_compile_and_package(
            exported, package_path=str(package_path), inductor_configs=INDUCTOR_CONFIGS
        )


class LoadedGraph:
    """A loaded package called like the eager module: one output comes back bare, several as a tuple."""

    def __init__(self, runner):
        self.runner = runner

    def __call__(self, *inputs):
        # The package already rebuilds the module's output structure (a bare tensor stays bare); indexing
        # a bare [B, vocab] tensor here would hand back its first row instead of the whole batch.
        outputs = self.runner(*inputs)
        return outputs if isinstance(outputs, torch.Tensor) else tuple(outputs)


def load_graph(package_path: Path, constants: dict[str, torch.Tensor]) -> LoadedGraph:
    """Load a compiled graph and point it at shared weight tensors (no copy: user_managed)."""
    runner = torch._inductor.aoti_load_package(str(package_path))
    wanted = runner.get_constant_fqns()
    missing = [name for name in wanted if name not in constants]
    if missing:
        raise RuntimeError(f"{package_path} needs constants the weights lack: {missing[:5]}; recompile the model")
    runner.load_constants({name: constants[name] for name in wanted}, check_full_update=True, user_managed=True)
    return LoadedGraph(runner)
