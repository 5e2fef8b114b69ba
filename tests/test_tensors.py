"""The scale-safe unit vector every loss and head uses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bcl._tensors import l2_normalize


@pytest.mark.parametrize("scale", [1e-35, 1e-20, 1.0, 1e20, 1e35])
def test_unit_vectors_at_any_float32_scale(scale):
    torch.manual_seed(0)
    x = torch.randn(6, 9, dtype=torch.float64)
    expected = x / x.norm(dim=1, keepdim=True)
    out = l2_normalize((x * scale).float(), dim=1)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_gradient_equals_that_of_plain_normalisation_and_zero_vectors_stay_zero():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 5, 3, dtype=torch.float64)
    (l2_normalize(x, dim=1) * weights).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    (F.normalize(x, dim=1) * weights).sum().backward()
    torch.testing.assert_close(ours, x.grad)
    zeros = torch.zeros(2, 3, requires_grad=True)
    out = l2_normalize(zeros)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(2, 3)) and torch.isfinite(zeros.grad).all()


def test_bf16_keeps_its_dtype():
    out = l2_normalize(torch.tensor([[3e30, 4e30]], dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), torch.tensor([[0.6, 0.8]]), rtol=1e-2, atol=1e-2)
