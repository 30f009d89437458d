"""pydl.models: the three classifiers, fit / evaluate / predict, History, and argument checks."""

import math
from pathlib import Path

import pytest
import torch
from toolkit_helpers import digits_fixture, one_thread_fixture  # noqa: F401

import pydl.nn
from pydl.models import (
    BiLSTMClassifier,
    CNNClassifier,
    TransformerClassifier,
    evaluate,
    fit,
    layers,
    predict,
)
from pydl.models.gradients import layer_grad_norms


def small_cnn():
    return CNNClassifier(conv_layers=[(16, 3, "relu", 2), (16, 3, "relu", 2)],
                         dense_layers=[32])


def small_lstm():
    return BiLSTMClassifier(input_size=8, lstm_layers=[32])


def small_transformer():
    return TransformerClassifier(input_dim=4, seq_len=16, num_heads=2, key_dim=16, num_layers=1,
                                 ff_dim=64, dropout=0.0)


def test_layers_come_from_pydl_nn_where_it_has_them():
    for name, source in layers.sources().items():
        want = getattr(pydl.nn, name) if hasattr(pydl.nn, name) else getattr(torch.nn, name)
        assert getattr(layers, name) is want
        assert source == ("pydl.nn" if hasattr(pydl.nn, name) else "torch.nn")
    assert layers.Conv2d is pydl.nn.Conv2d  # the foundation's layer exists already


def test_models_switch_to_pydl_layers_when_they_land(monkeypatch):
    import importlib

    class LSTM(torch.nn.LSTM):  # stand-ins for pydl.nn layers that have not landed yet
        pass

    class MultiheadAttention(torch.nn.MultiheadAttention):
        pass

    monkeypatch.setattr(pydl.nn, "LSTM", LSTM, raising=False)
    monkeypatch.setattr(pydl.nn, "MultiheadAttention", MultiheadAttention, raising=False)
    try:
        importlib.reload(layers)
        assert layers.sources()["LSTM"] == "pydl.nn"
        assert all(type(m) is LSTM for m in small_lstm().rnns)
        assert all(type(b.attn) is MultiheadAttention for b in small_transformer().blocks)
    finally:
        monkeypatch.undo()
        importlib.reload(layers)
    assert layers.LSTM is not LSTM  # back to the real choice
    assert type(small_lstm().rnns[0]) is layers.LSTM


def test_models_are_built_from_the_layer_choices():
    cnn, lstm, tr = small_cnn(), small_lstm(), small_transformer()
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(type(m) is layers.Conv2d for m in convs)
    # relu fused into pydl's conv: no separate ReLU module after a pydl conv
    assert all(m.activation == "relu" for m in convs)
    assert all(type(m) is layers.LSTM for m in lstm.rnns)
    assert all(m.bidirectional for m in lstm.rnns)
    assert all(type(b.attn) is layers.MultiheadAttention for b in tr.blocks)


@pytest.mark.parametrize("form,make,epochs,lr,floor", [
    ("images", small_cnn, 6, 1e-2, 0.6),  # measured 0.84-0.87 over two seeds
    ("sequences", small_lstm, 6, 1e-2, 0.5),  # 0.75-0.78
    ("patches", small_transformer, 8, 3e-3, 0.3),  # 0.47-0.54; chance is 0.1
])
def test_each_model_trains_above_chance_on_a_small_slice(digits, form, make, epochs, lr, floor):
    X_train, X_test, y_train, y_test = digits[form]
    torch.manual_seed(0)
    model = make()
    history = fit(model, X_train[:400], y_train[:400], epochs=epochs, batch_size=32,
                  learning_rate=lr, validation_split=0.2, progress=False)
    assert history.loss[-1] < history.loss[0]
    assert len(history.val_accuracy) == epochs
    acc = evaluate(model, X_test, y_test)["accuracy"]
    assert acc > floor, f"test accuracy {acc:.3f} (chance is 0.1)"


def test_fit_is_reproducible_under_a_seed(digits):
    X, _, y, _ = digits["images"]
    results = []
    for _ in range(2):
        torch.manual_seed(1)
        model = CNNClassifier(conv_layers=[(8, 3, "relu", 2)],
                              dense_layers=[{"units": 16, "dropout": 0.5}])
        history = fit(model, X[:128], y[:128], epochs=2, batch_size=16, seed=3, progress=False)
        results.append((history.step_loss, [p.detach().clone() for p in model.parameters()]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.equal(a, b)


def test_history_records_gradient_norms_per_layer(digits):
    X, _, y, _ = digits["sequences"]
    torch.manual_seed(0)
    model = BiLSTMClassifier(input_size=8, lstm_layers=[8, 8], dense_layers=[8])
    history = fit(model, X[:64], y[:64], epochs=2, batch_size=64, optimizer="sgd",
                  learning_rate=1e-3, clip_grad_norm=None, progress=False)
    # one step per epoch: the epoch mean is that step's norm
    assert set(history.layer_grad_norms[0]) == {"rnns.0", "rnns.1", "classifier.0", "classifier.2"}
    total = math.sqrt(sum(v * v for v in history.layer_grad_norms[-1].values()))
    assert total == pytest.approx(history.step_grad_norm[-1], rel=1e-5)
    # and layer_grad_norms reads the model's current gradients the same way
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(X[:4]), y[:4]).backward()
    norms = layer_grad_norms(model)
    want = torch.cat([p.grad.flatten() for p in model.rnns[1].parameters()]).norm().item()
    assert norms["rnns.1"] == pytest.approx(want, rel=1e-6)


def test_recurrent_model_clips_by_default(digits):
    X, _, y, _ = digits["sequences"]
    assert fit(small_lstm(), X[:32], y[:32], epochs=1, progress=False).clip_grad_norm == 1.0
    assert fit(small_lstm(), X[:32], y[:32], epochs=1, progress=False,
               clip_grad_norm=None).clip_grad_norm is None
    Xi, _, yi, _ = digits["images"]
    assert fit(small_cnn(), Xi[:32], yi[:32], epochs=1, progress=False).clip_grad_norm is None
    # clipping really bounds the update: with SGD, the parameter change is lr * clipped grad
    torch.manual_seed(0)
    model = small_lstm()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    history = fit(model, X[:32], y[:32], epochs=1, batch_size=32, optimizer="sgd",
                  learning_rate=1.0, clip_grad_norm=1e-3, progress=False)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert history.step_grad_norm[0] > 1e-3
    assert (after - before).norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_predict_and_evaluate_agree(digits):
    X, _, y, _ = digits["images"]
    torch.manual_seed(0)
    model = small_cnn()
    labels = predict(model, X[:50])
    probs = predict(model, X[:50].numpy(), return_probs=True)  # numpy input works too
    assert labels.shape == (50,) and probs.shape == (50, 10)
    assert torch.allclose(probs.sum(1), torch.ones(50))
    assert torch.equal(probs.argmax(1), labels)
    metrics = evaluate(model, X[:50], y[:50])
    assert metrics["accuracy"] == pytest.approx((labels == y[:50]).double().mean().item())
    assert metrics["loss"] == pytest.approx(-probs.log()[torch.arange(50), y[:50]].mean().item(),
                                            rel=1e-4)


def test_progress_bar_and_optimizers(digits, capsys):
    pytest.importorskip("tqdm")
    X, _, y, _ = digits["images"]
    for optimizer in ("sgd", "momentum", "adam", "adamw", "rmsprop", torch.optim.Adagrad):
        fit(small_cnn(), X[:32], y[:32], epochs=1, optimizer=optimizer, learning_rate=1e-3,
            progress=optimizer == "adam")


def test_transformer_over_token_ids():
    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, 20, (256, 12), generator=g)
    y = (X[:, 0] >= 10).long()  # the class is in the first token
    torch.manual_seed(0)
    model = TransformerClassifier(input_dim=None, vocab_size=20, num_classes=2, seq_len=12,
                                  num_heads=2, key_dim=8, num_layers=1, ff_dim=32, dropout=0.0)
    history = fit(model, X, y, epochs=10, batch_size=16, learning_rate=3e-3, progress=False)
    assert history.accuracy[-1] > 0.9


def test_mean_pooling_and_learned_positions(digits):
    X = digits["patches"][0]
    model = TransformerClassifier(input_dim=4, seq_len=16, num_heads=2, d_model=16, num_layers=1,
                                  pooling="mean", positional="learned")
    assert model(X[:3]).shape == (3, 10)
    lstm = BiLSTMClassifier(input_size=8, lstm_layers=[(6,)], bidirectional=False, pooling="mean")
    assert lstm(digits["sequences"][0][:3]).shape == (3, 10)


def _img(d):
    X, _, y, _ = d["images"]
    return X[:10], y[:10]


@pytest.mark.parametrize("call,match", [
    (lambda d: fit(small_cnn(), _img(d)[0], _img(d)[1][:9], progress=False), "10 samples but y has 9"),
    (lambda d: fit(small_cnn(), _img(d)[0], _img(d)[1][:, None], progress=False), "1-D class labels"),
    (lambda d: fit(small_cnn(), _img(d)[0], _img(d)[1].float(), progress=False), "integer class"),
    (lambda d: fit(small_cnn(), _img(d)[0], _img(d)[1] + 10, progress=False), r"labels in \[0, 10\)"),
    (lambda d: fit(small_cnn(), _img(d)[0][:, 0], _img(d)[1], progress=False), r"\(batch, 1, 8, 8\)"),
    (lambda d: fit(small_lstm(), d["sequences"][0][:10, :, :7], d["sequences"][2][:10],
                   progress=False), r"\(batch, L, 8\)"),
    (lambda d: fit(small_transformer(), d["images"][0][:10, 0], _img(d)[1], progress=False),
     r"\(batch, L, 4\)"),
    (lambda d: fit(TransformerClassifier(seq_len=4), d["patches"][0][:10], _img(d)[1],
                   progress=False), "exceed seq_len=4"),
    (lambda d: fit(small_cnn(), *_img(d), optimizer="lbfgs", progress=False),
     "unknown optimizer 'lbfgs'"),
    (lambda d: fit(small_cnn(), *_img(d), epochs=0, progress=False), "epochs"),
    (lambda d: fit(small_cnn(), *_img(d), batch_size=0, progress=False), "batch_size"),
    (lambda d: fit(small_cnn(), *_img(d), learning_rate=-1, progress=False), "learning_rate"),
    (lambda d: fit(small_cnn(), *_img(d), validation_split=1.0, progress=False),
     "validation_split"),
    (lambda d: CNNClassifier(conv_layers=[(8, 3, "swish")]), "unknown activation 'swish'"),
    (lambda d: CNNClassifier(dense_layers=[{"units": 8, "activation": "softplus2"}]),
     "unknown activation"),
    (lambda d: CNNClassifier(conv_layers=[{"filters": 8, "kernel": 3}]), "unknown keys"),
    (lambda d: CNNClassifier(conv_layers=[(8, 3, "relu", 16)]), "larger than"),
    (lambda d: CNNClassifier(input_shape=(8, 8)), "input_shape"),
    (lambda d: BiLSTMClassifier(lstm_layers=[]), "at least one layer"),
    (lambda d: BiLSTMClassifier(pooling="max"), "pooling"),
    (lambda d: TransformerClassifier(num_heads=3, d_model=16, key_dim=None), "d_model"),
    (lambda d: TransformerClassifier(num_heads=4, d_model=32, key_dim=16), "key_dim"),
    (lambda d: TransformerClassifier(activation="swish"), "unknown activation"),
])
def test_bad_arguments_give_clear_errors(digits, call, match):
    with pytest.raises(ValueError, match=match):
        call(digits)


def test_wrong_argument_types_give_clear_errors(digits):
    X, _, y, _ = digits["images"]
    with pytest.raises(TypeError, match="X must be a numpy array or a torch tensor"):
        fit(small_cnn(), list(X[:10]), y[:10], progress=False)
    with pytest.raises(TypeError, match="y must be a numpy array or a torch tensor"):
        fit(small_cnn(), X[:10], y[:10].tolist(), progress=False)
    with pytest.raises(TypeError, match="expected a dict, tuple or int"):
        CNNClassifier(conv_layers=["conv"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("make,shape,augment", [
    (small_cnn, (1, 8, 8), "image"),
    (small_lstm, (8, 8), "sequence"),
    (small_transformer, (16, 4), None),
])
def test_fit_on_gpu(make, shape, augment):
    # Synthetic data (no scikit-learn on the GPU machine): inputs centred on +1 or -1, the
    # class says which (a shift with zero fill keeps it readable).
    from pydl.models import ImageAugment, SequenceAugment, attention_maps, saliency

    g = torch.Generator().manual_seed(0)
    sign = torch.randint(0, 2, (256,), generator=g) * 2 - 1
    X = sign.view(-1, *[1] * len(shape)) + 0.5 * torch.randn(256, *shape, generator=g)
    y = (sign > 0).long() * 3  # classes 0 and 3 of 10
    aug = {"image": ImageAugment(shift=1), "sequence": SequenceAugment(time_shift=1)}.get(augment)
    torch.manual_seed(0)
    model = make()
    history = fit(model, X, y, epochs=4, learning_rate=3e-3, device="cuda", augment=aug,
                  validation_split=0.25, progress=False)
    assert next(model.parameters()).is_cuda
    assert history.loss[-1] < history.loss[0] and math.isfinite(history.grad_norm[-1])
    assert history.layer_grad_norms[-1]
    assert predict(model, X[:8]).device.type == "cpu"
    assert evaluate(model, X, y)["accuracy"] > 0.6
    if len(shape) == 3:
        assert saliency(model, X[:4]).shape == (4, 8, 8)
    if make is small_transformer:
        maps = attention_maps(model, X[:4])
        assert maps[0].is_cuda and torch.allclose(maps[0].sum(-1).cpu(), torch.ones(4, 2, 17))


def test_toolkit_imports_no_optional_dependencies():
    # scikit-learn and matplotlib are the toolkit extra: imported only by the functions
    # that need them (tqdm is not checked: torch itself imports it).
    import subprocess
    import sys

    code = ("import sys, pydl, pydl.models, pydl.basics, pydl.datasets, pydl.demo; "
            "print([m for m in ('sklearn', 'matplotlib') if m in sys.modules])")
    root = Path(__file__).resolve().parents[1]  # this checkout's pydl, as in the test run
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120, cwd=root).stdout
    assert out.strip() == "[]"
