"""The forms models.llama multiplies by a weight in, against F.linear."""
import pytest
import torch
import torch.nn.functional as F

from bucketserve.models.llama import dense_linear, project


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


@pytest.mark.parametrize("fused_decode", [False, True])
def test_project_forms_agree(fused_decode):
    torch.manual_seed(1)
    x, weight = torch.randn(4, 1, 96), torch.randn(160, 96)
    torch.testing.assert_close(project(x, weight, fused_decode), F.linear(x, weight), rtol=1e-5, atol=1e-4)
