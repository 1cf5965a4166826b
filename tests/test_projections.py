"""The forms a forward multiplies by a weight in (models/projections.py), against F.linear."""
import pytest
import torch
import torch.nn.functional as F

from bucketserve.compiler.packed_weights import block_rows
from bucketserve.models.projections import (
    COMPILED_DECODE,
    EAGER,
    GraphForm,
    blocked_linear,
    blocked_weight,
    dense_linear,
)


@pytest.mark.parametrize("shape", [(8, 96), (1, 37, 96), (0, 96)])
def test_dense_linear_matches_f_linear(shape):
    torch.manual_seed(0)
    x, weight = torch.randn(*shape), torch.randn(160, 96)
    out = dense_linear(x, weight)
    assert out.shape == (*shape[:-1], 160)
    torch.testing.assert_close(out, F.linear(x, weight), rtol=1e-5, atol=1e-4)


def test_dense_linear_keeps_bfloat16():
    x, weight = torch.randn(4, 64, dtype=torch.bfloat16), torch.randn(32, 64, dtype=torch.bfloat16)
    out = dense_linear(x, weight)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.linear(x, weight))


@pytest.mark.parametrize("shape", [(8, 96), (1, 37, 96)])
@pytest.mark.parametrize("block_n", [16, 48, 256])  # 160 rows: whole blocks, a padded last block, one block
def test_blocked_linear_matches_f_linear(shape, block_n):
    torch.manual_seed(0)
    x, weight = torch.randn(*shape), torch.randn(160, 96)
    out = blocked_linear(x, weight, block_n)
    assert out.shape == (*shape[:-1], 160)
    torch.testing.assert_close(out, F.linear(x, weight), rtol=1e-5, atol=1e-4)


def test_blocked_linear_reorders_into_the_layout_block_rows_builds():
    """The reorder a freezing compile folds must be the copy load time builds (packed_weights)."""
    weight = torch.randn(40, 16)
    for block_n in (16, 48):
        assert torch.equal(blocked_weight(weight, block_n), block_rows(weight, block_n))
        # Identity rows read the weight back through the blocks exactly.
        assert torch.equal(blocked_linear(torch.eye(16), weight, block_n), weight.T)


@pytest.mark.parametrize("form", [EAGER, COMPILED_DECODE, GraphForm(block_sizes={(160, 96): 48}), GraphForm(block_sizes={(7, 7): 4})])
def test_every_graph_form_projects_like_f_linear(form):
    torch.manual_seed(1)
    x, weight = torch.randn(4, 1, 96), torch.randn(160, 96)
    torch.testing.assert_close(form.project(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-4)
