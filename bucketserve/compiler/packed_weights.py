"""Weights reordered into blocks of output rows, recorded at compile time and rebuilt once at load time.

Compiled decoders on the CPU (fp32) multiply over each weight reordered into blocks of `block_n` output
rows, [ceil(n / block_n), k, block_n] (zero-padded), which a register-blocked micro-kernel streams once for
every row of the batch: our GEMM kernel (kernels/blocked_linear.cpp, block_n 48, on AVX-512), where it
builds, else Inductor's C++ GEMM template, which reorders the weight itself. The compiled prefill reads the
same reordered weights (models.projections.blocked_linear), with the block_n the decoders chose for each
weight shape (block_sizes_by_shape), so a compiled model keeps one copy of each projection weight, blocked.
Where a graph writes the reorder itself (our kernel's decoders, the prefill), it is compiled with freezing,
which folds the reorder into a constant.

Inductor makes each reordered weight a new constant of the graph, named by Inductor ("constant12",
"_frozen_param3"). We keep weights out of the packages (aoti.INDUCTOR_CONFIGS), so compile_graph records
which weight and block_n each such constant is (by content, checked exactly) and load_graph rebuilds it
from the loaded weights, once for every graph that asks for the same one.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# What a decoder graph adds to aoti.INDUCTOR_CONFIGS to multiply through the C++ GEMM template and nothing else.
GEMM_TEMPLATE_CONFIGS = {"max_autotune_gemm": True, "max_autotune_gemm_backends": "CPP"}
# What the prefill and the GEMM-kernel decoders add so that the reorders they write are folded into constants.
FOLD_CONFIGS = {"freezing": True}


class PackedWeightError(RuntimeError):
    """A constant Inductor added to a graph that is no weight in the blocked layout we know how to rebuild."""


def uses_blocked_gemm(device: torch.device, dtype: torch.dtype) -> bool:
    """fp32 on the CPU: decoders multiply over blocked weights (the template packs pairs for VNNI in other dtypes)."""
    return device.type == "cpu" and dtype == torch.float32


def block_rows(weight: torch.Tensor, block_n: int) -> torch.Tensor:
    """weight [n, k] as the decoders' GEMM reads it: [ceil(n / block_n), k, block_n], rows past n zero.

    Copied straight into the result: a padded intermediate, freed at once, still left ~40% of the weights'
    bytes resident in the allocator after a model's worth of them."""
    n, k = weight.shape
    blocks, whole = -(-n // block_n), n // block_n
    packed = weight.new_empty(blocks, k, block_n)
    packed[:whole] = weight[: whole * block_n].view(whole, block_n, k).transpose(1, 2)
    if whole < blocks:
        packed[whole] = 0
        packed[whole, :, : n - whole * block_n] = weight[whole * block_n :].T
    return packed


@contextlib.contextmanager
def recording_constants() -> Iterator[dict[str, torch.Tensor]]:
    """Every constant Inductor registers while the block runs, by name (the name the package lists)."""
    from torch._inductor.graph import GraphLowering

    recorded: dict[str, torch.Tensor] = {}
    original = GraphLowering.add_tensor_constant

    def add_tensor_constant(self, data, name=None):
        node = original(self, data, name)
        recorded[node.get_name()] = data
        return node

    GraphLowering.add_tensor_constant = add_tensor_constant
    try:
        yield recorded
    finally:
        GraphLowering.add_tensor_constant = original


def describe_packed(packed: dict[str, torch.Tensor | None], weights: dict[str, torch.Tensor]) -> dict[str, dict]:
    """For each packed constant, the weight it was built from and its block_n: {name: {"source", "block_n"}}.
    None stands for a constant the package lists but that was not seen being made."""
    described = {}
    for name, tensor in packed.items():
        source = _source_of(tensor, weights) if tensor is not None and tensor.dim() == 3 else None
        if source is None:
            shape = "unseen" if tensor is None else f"of shape {tuple(tensor.shape)}"
            raise PackedWeightError(
                f"the compiled graph holds a constant {name} ({shape}) that is no weight reordered into "
                f"blocks of rows; bucketserve cannot rebuild it at load time"
            )
        described[name] = {"source": source, "block_n": tensor.shape[2]}
    return described


def _source_of(tensor: torch.Tensor, weights: dict[str, torch.Tensor]) -> str | None:
    blocks, k, block_n = tensor.shape
    for fqn, weight in weights.items():
        if weight.dim() != 2 or weight.shape[1] != k or weight.dtype != tensor.dtype:
            continue
        if not (blocks - 1) * block_n < weight.shape[0] <= blocks * block_n:
            continue
        # The first weight row is the first column of the first block: a cheap test before the exact one.
        if torch.equal(tensor[0, :, 0], weight[0]) and torch.equal(block_rows(weight, block_n), tensor):
            return fqn
    return None


def block_sizes_by_shape(described: list[dict[str, dict]], weights: dict[str, torch.Tensor]) -> dict[tuple[int, int], int]:
    """{(n, k): block_n} over the graphs' described constants: the block size each weight shape was reordered
    with. Where graphs chose differently for one shape, the larger block (each choice is its own copy)."""
    sizes: dict[tuple[int, int], int] = {}
    for graph in described:
        for entry in graph.values():
            shape = tuple(weights[entry["source"]].shape)
            sizes[shape] = max(sizes.get(shape, 0), entry["block_n"])
    return sizes


def build_packed(
    described: dict[str, dict], weights: dict[str, torch.Tensor], built: dict[tuple, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The packed constants of one graph from its weights; `built` is shared by the graphs of one model, so
    a weight reordered for one decoder is the same tensor for the next."""
    packed = {}
    for name, entry in described.items():
        weight = weights[entry["source"]]
        key = (weight.data_ptr(), tuple(weight.shape), entry["block_n"])
        if key not in built:
            built[key] = block_rows(weight, entry["block_n"])
        packed[name] = built[key]
    return packed
