"""`cnnlab demo`: without Fashion-MNIST it says so, trains on the embedded digits, and names the run."""

from __future__ import annotations

import pytest

import cnnlab.data
from cnnlab.cli.main import main
from cnnlab.errors import CnnlabError


def test_demo_falls_back_to_digits_and_says_how_to_get_fashion_mnist(tmp_path, monkeypatch, capsys):
    real = cnnlab.data.load_dataset

    def without_fashion(name, **kw):
        if name == "fashion-mnist":
            raise CnnlabError("dataset 'fashion-mnist' not found in /nowhere")
        return real(name, **kw)

    monkeypatch.setattr(cnnlab.data, "load_dataset", without_fashion)
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Fashion-MNIST not found" in text and "--download" in text
    assert "simple_cnn on digits: test accuracy" in text and str(out) in text
    assert (out / "best.safetensors").exists() and (out / "curves.png").exists()


def test_demo_refuses_a_bad_epoch_count(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # a usage error now: bounded when parsed, before any import of torch
        main(["--debug", "demo", "--epochs", "0", "--out", str(tmp_path / "d")])
    assert e.value.code == 2 and "--epochs: expected an integer from 1 to 100,000" in capsys.readouterr().err
