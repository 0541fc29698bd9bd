"""`cnnlab show`: kernels, feature maps, saliency, Grad-CAM and worst errors of a real (tiny) run.

Truth comes from outside the code under test: the kernels' known count and signs, a direct
`torch.autograd` gradient, `F.conv2d` for a feature map, Zhou et al.'s CAM for Grad-CAM on a
GAP + linear head, and `cnnlab.training.predict.predict_tensor` for which test images are wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.inspect.visual import (
    draw,
    grad_cam,
    last_conv_stage,
    show_errors,
    show_features,
    show_filters,
    show_saliency,
)

SPEC = "conv3x3-12 maxpool2 conv3x3-16 maxpool2 fc10"  # 12 first-layer kernels: a 4 x 3 grid


def tiny_run(base: Path) -> Path:
    """A 2-epoch run on the 8x8 digits, trained once per test session (test_report.py reuses it)."""
    path = base / "visual-run"
    if not (path / "best.json").is_file():
        import cnnlab  # noqa: PLC0415

        cnnlab.train(model=SPEC, data="digits", epochs=2, batch_size=64, lr=0.01, out=str(path),
                     verbose=False, quiet=True)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def image(run) -> Path:
    """A test digit as a PNG file, as a user would pass it."""
    from cnnlab.data import load_dataset  # noqa: PLC0415

    path = run.parent / "digit.png"
    Image.fromarray(load_dataset("digits").test.images[3, 0].numpy()).save(path)
    return path


def assert_picture(path: Path) -> np.ndarray:
    """A readable, non-empty, non-blank PNG; returns its RGB pixels."""
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        arr = np.asarray(img.convert("RGB"), dtype=np.float64)
    assert arr.size > 0 and arr.var() > 0
    return arr


def runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D mask."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.diff(padded)
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1), strict=True))


def count_tiles(arr: np.ndarray, background=draw.BACKGROUND) -> int:
    """Tiles = separate blocks of non-background pixels, counted row band by row band."""
    content = (arr != np.array(background)).any(-1)  # (H, W)
    return sum(len(runs_of(content[a:b].any(0))) for a, b in runs_of(content.any(1)))


# ---- filters ---------------------------------------------------------------------------------------
def test_filters_one_tile_per_kernel(run, tmp_path):
    shown = show_filters(run, out=tmp_path / "f.png")
    assert shown.path == tmp_path / "f.png"
    arr = assert_picture(shown.path)
    assert count_tiles(arr) == 12  # out_channels of conv3x3-12
    assert shown.data["shape"] == (12, 1, 3, 3)


def test_filters_default_location(run):
    shown = show_filters(run)
    assert shown.path == run / "show" / "filters.png"
    assert_picture(shown.path)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_kernel_grid_counts_and_signs(in_channels):
    torch.manual_seed(1)
    weight = torch.randn(5, in_channels, 5, 5)
    grid = draw.kernel_grid(weight, tile=20, gap=3)
    assert count_tiles(grid) == 5
    if in_channels == 1:
        # tile 0 starts at (gap, gap); each weight is a 4x4 block: red where > 0, blue where < 0
        w = weight[0, 0]
        for r in range(5):
            for c in range(5):
                px = grid[3 + 4 * r + 2, 3 + 4 * c + 2].astype(int)
                if w[r, c] > 0.05:
                    assert px[0] == 255 and px[2] < 255
                elif w[r, c] < -0.05:
                    assert px[2] == 255 and px[0] < 255


# ---- feature maps ----------------------------------------------------------------------------------
def test_features_match_a_direct_convolution(run, image, tmp_path):
    from cnnlab.training.run import load_model  # noqa: PLC0415

    shown = show_features(run, image, layers=["features.0", "features.1"], out=tmp_path / "m.png", per_layer=4)
    assert_picture(shown.path)
    model, card = load_model(run)
    pixels = torch.from_numpy(np.asarray(Image.open(image).convert("L"), dtype=np.float32))
    x = ((pixels / 255 - card.mean[0]) / card.std[0]).view(1, 1, 8, 8)
    conv = model.features[0]
    expected = F.conv2d(x, conv.weight, conv.bias, padding=1)[0]  # (12, 8, 8)
    torch.testing.assert_close(shown.data["maps"]["features.0"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shown.data["maps"]["features.1"], expected.relu(), atol=1e-5, rtol=1e-5)


def test_features_default_layers_spread_over_depth(run, image):
    shown = show_features(run, image, per_layer=4)
    assert_picture(shown.path)
    layers = shown.data["layers"]
    assert 2 <= len(layers) <= 4 and layers[0] == "features.0"
    assert [s[1] for s in shown.data["shapes"].values()] == sorted((s[1] for s in shown.data["shapes"].values()),
                                                                  reverse=True)  # deeper: smaller maps


def test_features_unknown_layer_suggests(run, image):
    with pytest.raises(CnnlabError, match=r"unknown layer 'featres\.2' \(did you mean 'features\.2'\?\).*features\.0"):
        show_features(run, image, layers=["featres.2"])


# ---- saliency --------------------------------------------------------------------------------------
def test_gradient_saliency_matches_autograd(run, image, tmp_path):
    from cnnlab.training.run import load_model  # noqa: PLC0415

    shown = show_saliency(run, image, method="gradient", out=tmp_path / "s.png")
    assert_picture(shown.path)
    model, card = load_model(run)
    pixels = torch.from_numpy(np.asarray(Image.open(image).convert("L"), dtype=np.float32))
    x = ((pixels / 255 - card.mean[0]) / card.std[0]).view(1, 1, 8, 8).requires_grad_(True)
    logits = model(x)
    cls = int(logits.argmax())
    logits[0, cls].backward()
    assert shown.data["predicted"] == cls
    torch.testing.assert_close(shown.data["gradient"], x.grad, atol=1e-6, rtol=1e-5)
    assert float(x.grad.abs().sum()) > 0


def test_gradcam_writes_a_picture(run, image):
    shown = show_saliency(run, image, method="gradcam")
    assert_picture(shown.path)
    assert shown.data["layer"] == "features.5"  # the last stage of feature_info: the second max-pool
    heat = shown.data["heat"]
    assert heat.shape == (8, 8) and float(heat.min()) >= 0 and float(heat.max()) <= 1


def test_gradcam_equals_cam_for_a_gap_linear_head():
    """Selvaraju et al. §3.1: with global average pooling and one linear layer, Grad-CAM is CAM."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 4)).eval()
    x = torch.randn(1, 3, 10, 10)
    cam, cls, _ = grad_cam(model, x, layer="1")
    acts = model[1](model[0](x))  # (1, 6, 10, 10)
    expected = torch.einsum("k,khw->hw", model[4].weight[cls], acts[0]).relu()  # Zhou et al. 2016
    expected = expected / expected.max()
    torch.testing.assert_close(cam, expected.detach(), atol=1e-5, rtol=1e-4)


def test_gradcam_default_layer_skips_global_pooling():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    assert last_conv_stage(model, (1, 8, 8)) == "1"  # the ReLU's 8x8 map, not the 1x1 pooled one


def test_saliency_rejects_unknown_method(run, image):
    with pytest.raises(CnnlabError, match="unknown saliency method 'lime'"):
        show_saliency(run, image, method="lime")


# ---- errors ----------------------------------------------------------------------------------------
def test_errors_are_the_most_confident_mistakes(run, tmp_path):
    from cnnlab.data import load_dataset  # noqa: PLC0415
    from cnnlab.training.predict import predict_tensor  # noqa: PLC0415
    from cnnlab.training.run import load_model  # noqa: PLC0415

    shown = show_errors(run, count=6, out=tmp_path / "e.png")
    assert_picture(shown.path)
    model, card = load_model(run)
    test = load_dataset("digits").test
    probs = predict_tensor(model, card, test.images)  # an independent prediction pass
    conf, pred = probs.max(1)
    wrong = (pred != test.labels).nonzero().flatten()
    assert shown.data["total_wrong"] == len(wrong) > 6
    mistakes = shown.data["mistakes"]
    assert len(mistakes) == 6
    for m in mistakes:
        assert pred[m.index] != test.labels[m.index]
        assert (m.true, m.predicted) == (int(test.labels[m.index]), int(pred[m.index]))
        assert m.confidence == pytest.approx(float(conf[m.index]), abs=1e-5)
    top = conf[wrong].sort(descending=True).values[:6]
    assert [m.confidence for m in mistakes] == pytest.approx(top.tolist(), abs=1e-5)


# ---- the CLI ---------------------------------------------------------------------------------------
def test_cli_show(run, image, tmp_path, capsys):
    from cnnlab.cli.main import main  # noqa: PLC0415 - in-process: the parsing and printing, not a fresh interpreter

    out = tmp_path / "cli.png"
    assert main(["show", "filters", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "12 kernels" in printed
    assert_picture(out)
    assert main(["show", "features", str(run), str(image), "--layers", "features.9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cnnlab show: error: unknown layer 'features.9'")
