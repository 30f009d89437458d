"""pydl.nn.Conv2d as a drop-in for torch.nn.Conv2d, pydl.convert, compile, autocast."""

import pytest
import torch
from conftest import assert_close_rel

import pydl

CTOR_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=8, kernel_size=(3, 2), stride=2, padding=(1, 0), bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding="same", dilation=2, groups=4),
    dict(in_channels=4, out_channels=6, kernel_size=4, padding="same"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding="valid"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, padding_mode="reflect"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="circular"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=(2, 1), padding_mode="replicate"),
]


@pytest.mark.parametrize("kwargs", CTOR_CASES)
def test_same_init_state_dict_and_output_as_torch(kwargs):
    torch.manual_seed(3)
    ours = pydl.nn.Conv2d(**kwargs, dtype=torch.float64)
    torch.manual_seed(3)
    theirs = torch.nn.Conv2d(**kwargs, dtype=torch.float64)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), f"init differs for {key}"
    # Loads both ways.
    fresh_torch = torch.nn.Conv2d(**kwargs, dtype=torch.float64)
    fresh_torch.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, 11, 10, dtype=torch.float64)
    assert_close_rel(ours(x), theirs(x), torch.float64, str(kwargs))
    assert_close_rel(fresh_torch(x), theirs(x), torch.float64, str(kwargs))


def test_fused_activation_and_residual_and_grads():
    torch.manual_seed(0)
    conv = pydl.nn.Conv2d(3, 5, 3, padding=1, activation="silu", dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    residual = torch.randn(2, 5, 8, 8, dtype=torch.float64, requires_grad=True)
    out = conv(x, residual)
    plain = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    expected = torch.nn.functional.silu(plain + residual)
    assert_close_rel(out, expected, torch.float64, "fused")
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, conv.weight, conv.bias, residual), g)
    want = torch.autograd.grad(expected, (x, conv.weight, conv.bias, residual), g)
    for a, b in zip(got, want):
        assert_close_rel(a, b, torch.float64, "fused grads")
    assert "activation='silu'" in repr(conv)
    with pytest.raises(ValueError, match="activation"):
        pydl.nn.Conv2d(3, 5, 3, activation="swish")


def test_unbatched_module_input():
    conv = pydl.nn.Conv2d(3, 4, 3, padding=1)
    assert conv(torch.randn(3, 6, 6)).shape == (4, 6, 6)


def _model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU()),
        torch.nn.Conv2d(8, 4, 1),
    ).double()


def test_convert_swaps_and_back():
    torch.manual_seed(0)
    model = _model().eval()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    expected = model(x)
    params_before = [id(p) for p in model.parameters()]
    converted = pydl.convert(model)
    report = converted.pydl_conversion_report
    assert [name for name, _, _ in report.swapped] == ["0", "3.0", "4"]
    assert all(to == "pydl.nn.Conv2d" for _, _, to in report.swapped)
    left = {name: cls for name, cls, _ in report.left}
    assert left == {"1": "torch.nn.BatchNorm2d", "2": "torch.nn.ReLU", "3.1": "torch.nn.ReLU"}
    assert all(type(m) is pydl.nn.Conv2d for m in (converted[0], converted[3][0], converted[4]))
    assert [id(p) for p in converted.parameters()] == params_before  # optimizers keep working
    assert_close_rel(converted(x), expected, torch.float64, "converted")
    back = pydl.convert(converted, to="torch")
    assert all(type(m) is torch.nn.Conv2d for m in (back[0], back[3][0], back[4]))
    assert not hasattr(back[0], "activation")
    assert_close_rel(back(x), expected, torch.float64, "converted back")
    assert "swapped 3" in str(back.pydl_conversion_report)


def test_convert_root_module_and_fused_layers_stay():
    root = torch.nn.Conv2d(3, 4, 3)
    converted = pydl.convert(root)
    assert type(converted) is pydl.nn.Conv2d
    fused = torch.nn.Sequential(pydl.nn.Conv2d(3, 4, 3, activation="relu"))
    back = pydl.convert(fused, to="torch")
    assert type(back[0]) is pydl.nn.Conv2d
    assert "fused activation" in back.pydl_conversion_report.left[0][2]
    with pytest.raises(ValueError):
        pydl.convert(root, to="tensorflow")


def test_torch_compile_fullgraph_aot_eager():
    torch.manual_seed(0)
    conv = pydl.nn.Conv2d(3, 6, 3, padding=1, activation="relu", dtype=torch.float64)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(conv, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    assert_close_rel(out, conv(x), torch.float64, "compiled")
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_torch_compile_inductor():
    torch._dynamo.reset()
    conv = pydl.nn.Conv2d(4, 4, 3, padding=1, activation="gelu")
    x = torch.randn(1, 4, 6, 6)
    compiled = torch.compile(conv, fullgraph=True)
    assert_close_rel(compiled(x), conv(x), torch.float32, "inductor")


def test_cpu_autocast_bfloat16_like_torch(monkeypatch):
    """Under CPU autocast the layer computes in bf16 like torch's; pydl routes
    CPU bf16 to torch's oneDNN kernel, a fallback that PYDL_STRICT would refuse."""
    from pydl import _backend

    monkeypatch.setenv("PYDL_STRICT", "0")
    assert _backend.explain("conv2d", "cpu", torch.bfloat16)[0] == "torch"
    torch.manual_seed(0)
    ours = pydl.nn.Conv2d(4, 6, 3, padding=1)
    theirs = torch.nn.Conv2d(4, 6, 3, padding=1)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(x), theirs(x)
    assert got.dtype == want.dtype == torch.bfloat16
    exact = theirs(x).double()
    assert (got.double() - exact).norm() <= 2 * (want.double() - exact).norm() + 1e-6
