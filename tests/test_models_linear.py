"""The few-row product of pyramidflow.models.linear: the same function as nn.Linear (to float32
rounding, against a float64 reference), used only where it was measured faster."""

import pytest
import torch

from pyramidflow.models import linear as lin


def _pair(out_features, in_features, bias=True):
    torch.manual_seed(0)
    ours = lin.Linear(in_features, out_features, bias=bias)
    ref = torch.nn.Linear(in_features, out_features, bias=bias)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("bias", [True, False])
def test_few_row_product_equals_the_linear_map(bias):
    ours, ref = _pair(1536, 1536, bias)
    x = torch.randn(2, 10, 1536, generator=torch.Generator().manual_seed(1))  # 20 rows
    with torch.no_grad():
        assert lin.few_row_product(x, ours.weight, ours.bias)
        exact = torch.nn.functional.linear(x.double(), ours.weight.double(),
                                           None if ours.bias is None else ours.bias.double())
        out = ours(x)
        assert out.shape == (2, 10, 1536)
        # float32 rounding of a 1536-term sum, either order
        torch.testing.assert_close(out.double(), exact, rtol=0, atol=1e-4)
        torch.testing.assert_close(ref(x).double(), exact, rtol=0, atol=1e-4)


def test_dispatch_only_where_it_was_measured_faster(monkeypatch):
    big, _ = _pair(1536, 1536)
    small, _ = _pair(128, 128)
    few, many = torch.randn(20, 1536), torch.randn(400, 1536)
    with torch.no_grad():
        assert lin.few_row_product(few, big.weight, big.bias)
        assert not lin.few_row_product(many, big.weight, big.bias)  # too many rows
        assert not lin.few_row_product(torch.randn(20, 128), small.weight, small.bias)  # small weight
        assert not lin.few_row_product(few.double(), big.weight.double(), big.bias.double())  # float32 only
    assert not lin.few_row_product(few, big.weight, big.bias)  # autograd on: nn.Linear's path
    with torch.no_grad():
        monkeypatch.setattr(lin, "ENABLED", False)  # PYRAMIDFLOW_FEW_ROW_LINEAR=0
        assert not lin.few_row_product(few, big.weight, big.bias)
    assert list(big.state_dict()) == ["weight", "bias"]
