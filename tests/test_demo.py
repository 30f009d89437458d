"""python -m pydl.demo end to end at a tenth of its epochs: it runs, prints, writes its plots."""

import json

import pytest
from toolkit_helpers import one_thread_fixture  # noqa: F401


def test_demo_smoke_run(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from pydl.demo.__main__ import main

    results = main(["--out", str(tmp_path), "--epoch-scale", "0.1", "--no-progress"])
    printed = capsys.readouterr().out
    for name in ("cnn", "bilstm", "transformer"):
        assert f"{name}" in printed
        assert 0.1 < results["models"][name]["test_accuracy"] <= 1.0  # above chance after 1-4 epochs
    for png in ("curves", "saliency", "attention", "augmentation", "gradient_norms"):
        assert (tmp_path / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["models"].keys() == results["models"].keys()
    assert set(saved["clipping"]) == {"unclipped", "clipped"}
