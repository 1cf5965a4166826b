"""Ahead-of-time compilation of one graph with torch.export + AOTInductor, weights left out of the package."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .graph_specs import GraphSpec, graph_constants
from .packed_weights import build_packed, describe_packed, recording_constants

# Weights stay out of each .so: every graph borrows the one set of tensors the runtime loads.
INDUCTOR_CONFIGS = {"aot_inductor.package_constants_in_so": False}


def packed_path(package_path: Path) -> Path:
    """Beside a package: which of its constants are weights reordered into blocks of rows (packed_weights)."""
    return package_path.with_suffix(".packed.json")


def read_packed(package_path: Path) -> dict[str, dict]:
    """The sidecar compile_graph wrote beside a package ({} when it reorders no weight)."""
    sidecar = packed_path(package_path)
    return json.loads(sidecar.read_text()) if sidecar.is_file() else {}


def compile_graph(spec: GraphSpec, package_path: Path) -> None:
    weights = graph_constants(spec.module)
    with torch.no_grad(), recording_constants() as recorded:
        exported = torch.export.export(spec.module, spec.example_inputs, dynamic_shapes=spec.dynamic_shapes)
        torch._inductor.aoti_compile_and_package(
            exported, package_path=str(package_path), inductor_configs={**INDUCTOR_CONFIGS, **spec.inductor_configs}
        )
    # Constants the package wants that are none of the module's own: Inductor made them from the weights.
    made = [name for name in torch._inductor.aoti_load_package(str(package_path)).get_constant_fqns() if name not in weights]
    if made:
        described = describe_packed({name: recorded.get(name) for name in made}, weights)
        packed_path(package_path).write_text(json.dumps(described, indent=1))


class LoadedGraph:
    """A loaded package called like the eager module: one output comes back bare, several as a tuple."""

    def __init__(self, runner):
        self.runner = runner

    def __call__(self, *inputs):
        # The package already rebuilds the module's output structure (a bare tensor stays bare); indexing
        # a bare [B, vocab] tensor here would hand back its first row instead of the whole batch.
        outputs = self.runner(*inputs)
        return outputs if isinstance(outputs, torch.Tensor) else tuple(outputs)


def load_graph(
    package_path: Path, constants: dict[str, torch.Tensor], packed: dict[tuple, torch.Tensor] | None = None
) -> LoadedGraph:
    """Load a compiled graph and point it at shared weight tensors (no copy: user_managed). `packed` holds the
    weights already reordered for earlier graphs of the same model; pass one dict to all of them to share."""
    runner = torch._inductor.aoti_load_package(str(package_path))
    described = read_packed(package_path)
    if described:
        constants = {**constants, **build_packed(described, constants, {} if packed is None else packed)}
    wanted = runner.get_constant_fqns()
    missing = [name for name in wanted if name not in constants]
    if missing:
        raise RuntimeError(f"{package_path} needs constants the weights lack: {missing[:5]}; recompile the model")
    runner.load_constants({name: constants[name] for name in wanted}, check_full_update=True, user_managed=True)
    return LoadedGraph(runner)
