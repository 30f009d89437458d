"""pydl.models.interpret: saliency and attention maps (shapes, sum rules, the values
they must have), the PNG writers, and the exploding-gradient demonstration."""

import math

import pytest
import torch
from toolkit_helpers import digits_fixture, one_thread_fixture  # noqa: F401

from pydl.models import TransformerClassifier, attention_maps, fit, interpret, saliency
from pydl.models.gradients import clipping_demo
from pydl.models.training import History


class Linear(torch.nn.Module):
    num_classes = 3

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_saliency_of_a_linear_model_is_its_weights():
    torch.manual_seed(0)
    model = Linear()
    x = torch.randn(5, 2, 4, 4)
    target = torch.tensor([0, 1, 2, 1, 0])
    raw = saliency(model, x, target=target, normalize=False)
    w = model.fc.weight.detach().abs().reshape(3, 2, 4, 4).amax(1)  # max over channels
    assert raw.shape == (5, 4, 4)
    assert torch.allclose(raw, w[target])
    sal = saliency(model, x, target=target)
    assert torch.all(sal >= 0)
    assert torch.allclose(sal.flatten(1).sum(1), torch.ones(5))
    assert torch.allclose(sal, w[target] / w[target].flatten(1).sum(1)[:, None, None])
    # default target: the predicted class
    assert torch.equal(saliency(model, x), saliency(model, x, target=model(x).argmax(1)))
    with pytest.raises(ValueError, match="target must be a class"):
        saliency(model, x, target=3)


def test_saliency_of_the_cnn(digits):
    from pydl.models import CNNClassifier

    X = digits["images"][0][:4]
    model = CNNClassifier(conv_layers=[(4, 3, "relu", 2)], dense_layers=[8])
    model.train()
    sal = saliency(model, X)
    assert sal.shape == (4, 8, 8) and torch.allclose(sal.flatten(1).sum(1), torch.ones(4))
    assert model.training  # restored
    # it is the gradient: compare pixels against finite differences of the logit (a smooth
    # model, so no ReLU/max-pool kinks sit between the two evaluations)
    model = CNNClassifier(conv_layers=[(4, 3, "gelu", 0)],
                          dense_layers=[{"units": 8, "activation": "tanh"}]).double()
    x = X[:1].double()
    c = int(model.eval()(x).argmax())
    raw = saliency(model, x, normalize=False)
    for i, j in [divmod(int(raw[0].argmax()), 8), (0, 0), (3, 5)]:
        eps = 1e-6
        up, down = x.clone(), x.clone()
        up[0, 0, i, j] += eps
        down[0, 0, i, j] -= eps
        fd = (model(up)[0, c] - model(down)[0, c]).item() / (2 * eps)
        assert abs(fd) == pytest.approx(raw[0, i, j].item(), rel=1e-5, abs=1e-9)


def _manual_attention(block, h):
    """Softmax(q k^T / sqrt(d)) per head from the block's own attention parameters."""
    attn = block.attn
    d = attn.embed_dim
    x = block.norm1(h)
    q, k, _ = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).split(d, -1)
    heads = attn.num_heads
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2)
    q, k = split(q), split(k)
    return (q @ k.transpose(-1, -2) / math.sqrt(d // heads)).softmax(-1)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_attention_maps(digits, pooling):
    X = digits["patches"][0][:5]
    torch.manual_seed(0)
    model = TransformerClassifier(input_dim=4, seq_len=16, num_heads=2, key_dim=8, num_layers=2,
                                  pooling=pooling)
    maps = attention_maps(model, X)
    tokens = 17 if pooling == "cls" else 16
    assert len(maps) == 2
    for m in maps:
        assert m.shape == (5, 2, tokens, tokens)
        assert torch.all(m >= 0)
        assert torch.allclose(m.sum(-1), torch.ones(5, 2, tokens), atol=1e-5)
    # the first block's weights are softmax(q k^T / sqrt(d)) of its own projections
    with torch.no_grad():
        h = model.embed(X)
        if pooling == "cls":
            h = torch.cat([model.cls_token.expand(5, -1, -1), h], 1)
        h = h + model.pos[:, :tokens]
        assert torch.allclose(maps[0], _manual_attention(model.blocks[0], h), atol=1e-5)
    # asking for the maps does not change the output
    model.eval()
    logits, _ = model(X, return_attention=True)
    assert torch.allclose(logits, model(X), atol=1e-6)
    if pooling == "cls":
        grid = interpret.cls_attention(maps, (4, 4))
        assert grid.shape == (5, 4, 4)
        assert torch.allclose(grid.flatten(1).sum(1), torch.ones(5), atol=1e-5)


def test_attention_maps_need_a_transformer():
    with pytest.raises(ValueError, match="TransformerClassifier"):
        attention_maps(Linear(), torch.zeros(1, 2, 4, 4))


def test_pngs_are_written(tmp_path, digits):
    pytest.importorskip("matplotlib")
    X = digits["images"][0][:3]
    sal = saliency(_tiny_cnn(), X)
    paths = [interpret.save_saliency_png(X, sal, tmp_path / "s.png", labels=[1, 2, 3])]
    model = TransformerClassifier(input_dim=4, seq_len=16, num_heads=2, key_dim=8, num_layers=1)
    maps = attention_maps(model, digits["patches"][0][:3])
    paths.append(interpret.save_attention_png(X, maps, (4, 4), tmp_path / "a.png"))
    h = History(epoch=[1, 2], loss=[2.0, 1.0], accuracy=[0.3, 0.6], val_loss=[2.1, 1.2],
                val_accuracy=[0.3, 0.5], step_grad_norm=[3.0, 2.0],
                layer_grad_norms=[{"a": 1.0, "b": 2.0}] * 2)
    paths.append(interpret.plot_histories({"run": h}, tmp_path / "sub" / "h.png"))
    paths.append(interpret.plot_gradient_norms({"run": h}, tmp_path / "g.png"))
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


def _tiny_cnn():
    from pydl.models import CNNClassifier

    return CNNClassifier(conv_layers=[(4, 3, "relu", 2)], dense_layers=[8])


def test_clipping_keeps_a_deep_lstm_trainable(digits):
    X, _, y, _ = digits["sequences"]
    runs = clipping_demo(X, y, n=512, epochs=3, num_layers=4, hidden=16)
    unclipped, clipped = runs["unclipped"], runs["clipped"]
    start = math.log(10)  # cross-entropy of a uniform guess over 10 classes
    # without clipping the large gradients throw the weights off: the loss diverges
    assert max(unclipped.loss) > 4 * start, unclipped.loss
    assert max(unclipped.step_grad_norm) > 10 * clipped.clip_grad_norm
    # with clipping the same network at the same learning rate stays near the start (it
    # then learns: python -m pydl.demo trains it to ~87% in 10 epochs)
    assert all(math.isfinite(v) and v < 1.2 * start for v in clipped.loss), clipped.loss
    # per-layer gradient norms are recorded for every layer, and they show what the jump did
    # to the unclipped network: saturated gates, gradients vanishing towards the first layer
    layers = [f"rnns.{k}" for k in range(4)]
    assert set(layers) <= set(clipped.layer_grad_norms[-1])
    last = unclipped.layer_grad_norms[-1]
    assert last["rnns.0"] < last["rnns.3"] < last["classifier.0"]
    assert last["rnns.0"] < 0.1 * clipped.layer_grad_norms[-1]["rnns.0"]


def test_fit_stops_when_the_loss_is_not_finite(digits):
    X, _, y, _ = digits["images"]
    model = _tiny_cnn()
    with torch.no_grad():
        model.classifier[-1].bias.fill_(float("nan"))
    history = fit(model, X[:64], y[:64], epochs=3, batch_size=32, progress=False)
    assert history.diverged and len(history.step_loss) == 1 and len(history.epoch) == 1
