"""The CPU decode-attention kernel (kernels/paged_attention.cpp), over float32 and bfloat16 caches, against the
compiled graphs' reductions."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bucketserve.kernels import library
from bucketserve.models.llama import decode_attention


@pytest.fixture(scope="module", autouse=True)
def kernel_library():
    path = library.build()
    assert path is not None, "the CPU attention kernel did not build (see the warning logged)"
    return path


def paged_case(rows, heads, kv_heads, head_dim, block_size, blocks_per_row, positions, seed=0):
    """A cache with one extra block per row, rows' blocks shuffled, and the reference gather of their context."""
    generator = torch.Generator().manual_seed(seed)
    num_blocks = rows * blocks_per_row + 1
    cache = torch.randn(3, 2, num_blocks * block_size, kv_heads, head_dim, generator=generator)
    query = torch.randn(rows, heads, head_dim, generator=generator)
    tables = torch.randperm(num_blocks, generator=generator)[: rows * blocks_per_row].view(rows, blocks_per_row)
    return cache, query, tables, torch.tensor(positions)


def reference(cache, query, tables, positions, layer, block_size):
    context = torch.arange(tables.shape[1] * block_size)
    slots = tables[:, context // block_size] * block_size + context % block_size
    mask = context.view(1, -1) <= positions.view(-1, 1)
    out = decode_attention(query.unsqueeze(1), cache[layer, 0][slots], cache[layer, 1][slots], mask, cache.shape[3])
    return out[:, 0]


@pytest.mark.parametrize(
    "heads, kv_heads, head_dim, block_size, blocks_per_row, positions",
    [
        (9, 3, 64, 2048, 1, [2047, 0, 700, 255, 256, 1, 1500, 63]),  # the bench model's attention, one block a row
        (4, 2, 16, 16, 40, [639, 17, 0, 256]),  # many blocks a row, chunks of 256 crossed
        (8, 8, 20, 32, 4, [127, 5]),  # no grouping, head_dim not a whole number of vectors
        (6, 1, 32, 64, 2, [100]),  # one row: its chunks alone share the threads
        (8, 2, 128, 64, 8, [511, 300, 17]),  # Llama's head_dim, 4 query heads a KV head
        (12, 2, 64, 128, 3, [383, 40]),  # 6 query heads a KV head: more outputs than one value pass holds
        (4, 2, 256, 32, 2, [63, 33]),  # head_dim of 16 AVX-512 vectors: the values in pieces
        (4, 1, 80, 32, 2, [50]),  # head_dim a whole number of vectors, but not one the kernel unrolls for
    ],
)
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
def test_kernel_matches_the_reductions(heads, kv_heads, head_dim, block_size, blocks_per_row, positions, cache_dtype):
    """A bfloat16 cache against the fp32 reductions over its values widened to fp32 (exact): the kernel widens
    them in registers and computes in fp32, so it agrees as closely as over a fp32 cache (summation order)."""
    cache, query, tables, positions = paged_case(len(positions), heads, kv_heads, head_dim, block_size, blocks_per_row, positions)
    cache = cache.to(cache_dtype)
    for layer in (0, 2):
        got = torch.ops.bucketserve.paged_decode_attention(query, cache, layer, tables, positions, block_size)
        expected = reference(cache.float(), query, tables, positions, layer, block_size)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
def test_kernel_reads_nothing_past_a_rows_position(cache_dtype):
    cache, query, tables, positions = paged_case(2, 4, 2, 16, 16, 4, [20, 40])
    cache = cache.to(cache_dtype)
    before = torch.ops.bucketserve.paged_decode_attention(query, cache, 1, tables, positions, 16)
    for row, position in enumerate(positions.tolist()):
        for p in range(position + 1, 64):
            cache[1, :, tables[row, p // 16] * 16 + p % 16] = float("nan")
    torch.testing.assert_close(torch.ops.bucketserve.paged_decode_attention(query, cache, 1, tables, positions, 16), before)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(positions=torch.tensor([64, 0])), "outside its 4 blocks"),
        (dict(tables=torch.tensor([[0, 1, 2, 99], [3, 4, 5, 6]])), "names block 99"),
        (dict(layer=3), "layer 3 is outside"),
        (dict(query=torch.zeros(2, 4, 16, dtype=torch.float64)), "float32 query, got Double"),
        (dict(query=torch.zeros(2, 4, 16, dtype=torch.bfloat16)), "float32 query, got BFloat16"),
        (dict(cache_dtype=torch.float16), "float32 or bfloat16 kv_cache, got Half"),
    ],
)
def test_kernel_refuses_bad_input_with_a_reason(change, message):
    cache, query, tables, positions = paged_case(2, 4, 2, 16, 16, 4, [63, 0])
    args = dict(query=query, tables=tables, positions=positions, layer=0, cache_dtype=torch.float32)
    args.update(change)
    cache = cache.to(args["cache_dtype"])
    with pytest.raises(RuntimeError, match=message):
        torch.ops.bucketserve.paged_decode_attention(args["query"], cache, args["layer"], args["tables"], args["positions"], 16)


def test_a_fresh_process_registers_the_kernel_from_a_directorys_copy(tmp_path):
    library.copy_into(tmp_path)
    script = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from bucketserve.kernels import library\n"
        "assert not library.registered()\n"
        "library.load_from(Path(sys.argv[1]))\n"
        "assert library.registered()\n"
        # Compiling now needs the library file: built in a child process, since a second library
        # registering the namespace here would abort this one.
        "built = library.build()\n"
        "assert built.is_file() and built != Path(sys.argv[1]) / library.LIBRARY_FILE, built\n"
        "assert library.registered()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)


def test_an_older_library_with_fewer_ops_fails_clearly_instead_of_aborting(tmp_path, monkeypatch):
    """As if this process had loaded a directory compiled by a version without a newer op: loading or
    building the newer library cannot add it (the namespace is registered once), so both say so."""
    library.copy_into(tmp_path)
    monkeypatch.setattr(library, "OPS", (*library.OPS, "an_op_of_a_newer_version"))
    with pytest.raises(RuntimeError, match="lacks an_op_of_a_newer_version; to load .*new Python process"):
        library.load_from(tmp_path)
    with pytest.raises(RuntimeError, match="lacks an_op_of_a_newer_version; to compile a model"):
        library.build.__wrapped__()
