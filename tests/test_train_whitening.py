"""`--whiten`: the first convolution's outputs are white (identity covariance, against a numpy estimate of
the patch covariance), its filters stay frozen while its bias trains, and misuse is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import Crash, StopAt, run_cli

from cnnlab.core.preprocess import Preprocess
from cnnlab.data.memory import MemorySplit, channel_stats
from cnnlab.errors import CnnlabError
from cnnlab.models.spec import build_spec
from cnnlab.training import train
from cnnlab.training.whitening import EPS, whiten_first_conv


def correlated_images(n: int = 400, size: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 1, size, size) images with strongly correlated neighbouring pixels (blurred noise)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 1, size + 4, size + 4, generator=g)
    blur = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = (blur[:, None] * blur[None, :] / 256.0).view(1, 1, 5, 5)
    smooth = F.conv2d(noise, kernel)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).round().to(torch.uint8)


def test_whitened_first_layer_has_identity_covariance_on_its_patches():
    images = correlated_images()
    split = MemorySplit(images, torch.zeros(len(images), dtype=torch.int64))
    mean, std = channel_stats(images)
    prep = Preprocess(mean, std, "cpu", channels_last=False)
    torch.manual_seed(0)
    model = build_spec("conv3x3-18 maxpool2 fc10", input_size=(1, 16, 16), num_classes=10)
    info = whiten_first_conv(model, split, prep, (1, 16, 16))
    conv = model.features[0]
    assert info.filters == 18 and info.dims == 9 and info.images == 400 and info.patches == 400 * 14 * 14
    assert not conv.weight.requires_grad and conv.bias.requires_grad and torch.all(conv.bias == 0)

    # independent estimate: numpy's sliding windows over the normalised images, the uncentred covariance
    x = ((images.numpy().astype(np.float64) / 255.0) - mean[0]) / std[0]
    windows = np.lib.stride_tricks.sliding_window_view(x[:, 0], (3, 3), axis=(1, 2)).reshape(-1, 9)
    cov = windows.T @ windows / len(windows)
    values = np.linalg.eigvalsh(cov)[::-1]
    np.testing.assert_allclose(info.eigenvalues.numpy(), values, rtol=1e-4, atol=1e-7)
    assert values[0] / values[-1] > 100  # the blur correlates the pixels: far from white before

    # the layer's responses (no padding, no bias) have covariance diag(lambda / (lambda + eps)): white
    with torch.no_grad():
        out = F.conv2d(torch.from_numpy(x).float(), conv.weight).permute(0, 2, 3, 1).reshape(-1, 18).double().numpy()
    got = out.T @ out / len(out)
    expected = values / (values + EPS)
    np.testing.assert_allclose(got[:9, :9], np.diag(expected), atol=2e-3)
    np.testing.assert_allclose(got[9:, 9:], np.diag(expected), atol=2e-3)  # the negated half
    np.testing.assert_allclose(got[:9, 9:], -np.diag(expected), atol=2e-3)


def test_a_narrower_layer_keeps_the_directions_of_largest_variance():
    images = correlated_images(n=100)
    split = MemorySplit(images, torch.zeros(len(images), dtype=torch.int64))
    prep = Preprocess(*channel_stats(images), "cpu", channels_last=False)
    model = build_spec("conv3x3-6 fc10", input_size=(1, 16, 16), num_classes=10)
    info = whiten_first_conv(model, split, prep, (1, 16, 16))
    w = model.features[0].weight.detach().reshape(6, 9).double()
    # rows: +v1 +v2 +v3 -v1 -v2 -v3, each of norm 1 / sqrt(lambda_i + eps)
    norms = w.norm(dim=1)
    np.testing.assert_allclose(norms[:3].numpy(), 1 / np.sqrt(info.eigenvalues[:3].double().numpy() + EPS), rtol=1e-4)
    torch.testing.assert_close(w[3:], -w[:3])


def test_training_keeps_the_filters_and_trains_the_bias(tmp_path):
    spec = "conv3x3-18 conv3x3-16/bn relu maxpool2 fc10"
    result = train(model=spec, data="digits", whiten=True, epochs=1, batch_size=64, lr=3e-3, seed=1,
                   out=str(tmp_path / "run"), quiet=True, verbose=False)
    model = result.model
    torch.manual_seed(1)
    fresh = build_spec(spec, input_size=(1, 8, 8), num_classes=10)
    from cnnlab.training.selection import load_for_training  # noqa: PLC0415

    ds, _ = load_for_training("digits", val_fraction=None, seed=1)
    whiten_first_conv(fresh, ds.train, Preprocess(ds.mean, ds.std, "cpu", channels_last=False), (1, 8, 8), seed=1)
    torch.testing.assert_close(model.features[0].weight, fresh.features[0].weight)  # unchanged by 20 steps
    assert model.features[0].bias.abs().sum() > 0  # the bias trained
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["whiten"] is True and "18 frozen filters" in config["whitening"]


def test_misuse_is_refused_in_one_line(tmp_path):
    images = correlated_images(n=20)
    split = MemorySplit(images, torch.zeros(len(images), dtype=torch.int64))
    prep = Preprocess(*channel_stats(images), "cpu", channels_last=False)
    with pytest.raises(CnnlabError, match=r"32 filters.*at most 18.*conv3x3-18"):
        whiten_first_conv(build_spec("conv3x3-32 fc10", input_size=(1, 16, 16), num_classes=10), split, prep, (1, 16, 16))
    with pytest.raises(CnnlabError, match="does not read the image directly"):
        whiten_first_conv(build_spec("maxpool2 conv3x3-8 fc10", input_size=(1, 16, 16), num_classes=10), split, prep,
                          (1, 16, 16))
    with pytest.raises(CnnlabError, match="has none"):
        whiten_first_conv(build_spec("fc10", input_size=(1, 16, 16), num_classes=10), split, prep, (1, 16, 16))
    r = run_cli("train", "--model", "simple_cnn", "--data", "digits", "--whiten", "--epochs", "1",
                "--out", str(tmp_path / "w"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--whiten" in r.stderr
    assert not (tmp_path / "w").exists()


def test_resume_with_whitening_is_bit_exact(tmp_path):
    """Stopped mid-run and resumed, the weights equal an uninterrupted run's (the frozen filters come back
    from the checkpoint and stay frozen)."""
    opts = dict(model="conv3x3-18 conv3x3-8/bn relu maxpool2 fc10", data="digits", whiten=True, epochs=2,
                batch_size=64, lr=3e-3, seed=2, verbose=False, plots=False)
    full = train(out=str(tmp_path / "a"), **opts)

    with pytest.raises(Crash):
        train(out=str(tmp_path / "b"), checkpoint_every=3, callbacks=[StopAt(1, 4)], **opts)
    resumed = train(resume=str(tmp_path / "b"), verbose=False, plots=False)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert not resumed.model.features[0].weight.requires_grad
