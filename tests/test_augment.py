"""cnnlab.augment ops, each checked against an independent computation (numpy, torchvision's functional
ops, torch's grid_sample), plus per-sample randomness and seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from cnnlab.augment import (
    OPS,
    Contrast,
    Crop,
    Erase,
    Exposure,
    Flip,
    Pipeline,
    ResizedCrop,
    Saturation,
    Scale,
    Translate,
    VFlip,
    parse_pipeline,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ramp(n: int, h: int, w: int) -> torch.Tensor:
    """(n, 1, h, w) where pixel (i, j) holds (i * w + j + 1) / (h * w + 1): every pixel distinct, > 0."""
    v = (torch.arange(h * w, dtype=torch.float32) + 1) / (h * w + 1)
    return v.view(1, 1, h, w).repeat(n, 1, 1, 1)


def rgb(n: int = 16, h: int = 12, w: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=gen(seed))


# ---------------------------------------------------------------------------------------------------- randomness


def test_parameters_are_drawn_per_sample():
    x = rgb(32)
    for op in (Flip(), Crop(4), Scale(), Exposure(0.3), Saturation(0.3), Erase(p=1), Translate(0.2)):
        params = op.sample(x.shape, gen(), x.device)
        for name, v in params.items():
            assert v.shape == (32,), (op, name)
        # at least one parameter takes several values within the one batch
        assert any(len(torch.unique(v)) > 1 for v in params.values()), op


def test_identical_images_get_different_augmentations():
    x = rgb(1).repeat(16, 1, 1, 1)
    y = parse_pipeline("lecture")(x, gen())
    distinct = {tuple(y[i].flatten()[:200].tolist()) for i in range(16)}
    assert len(distinct) >= 12


def test_same_seed_same_batch_different_seed_different():
    p = parse_pipeline("lecture,erase,translate,contrast")
    x = rgb(8)
    assert torch.equal(p(x, gen(1)), p(x, gen(1)))
    assert not torch.equal(p(x, gen(1)), p(x, gen(2)))


def test_probability_is_per_sample_fraction():
    params = Flip(p=0.3).sample((20_000, 1, 4, 4), gen())
    assert abs(params["flip"].float().mean().item() - 0.3) < 0.02
    assert not Flip(p=0.0).sample((100, 1, 4, 4), gen())["flip"].any()


# ---------------------------------------------------------------------------------------------------- flips


@pytest.mark.parametrize("cls,dim", [(Flip, 3), (VFlip, 2)])
def test_flip_matches_torch_flip_on_chosen_samples(cls, dim):
    x = rgb(16)
    op = cls()
    params = op.sample(x.shape, gen())
    chosen = params["flip"]
    assert 0 < chosen.sum() < 16
    y = op.apply(x, params)
    torch.testing.assert_close(y[chosen], torch.flip(x[chosen], dims=[dim]), rtol=0, atol=0)
    torch.testing.assert_close(y[~chosen], x[~chosen], rtol=0, atol=0)


def test_flip_twice_is_identity():
    x = rgb(8)
    op = Flip(p=1.0)
    assert torch.equal(op(op(x, gen(0)), gen(1)), x)


# ---------------------------------------------------------------------------------------------------- colour


@pytest.mark.parametrize("op", [Exposure(0.0), Saturation(0.0), Contrast(0.0), Exposure(0.5, p=0.0)])
def test_zero_strength_is_identity(op):
    x = rgb(8)
    torch.testing.assert_close(op(x, gen()), x, rtol=0, atol=1e-7)


def test_brightness_matches_numpy_and_torchvision():
    x = rgb(16)
    op = Exposure(0.4)
    params = op.sample(x.shape, gen())
    b = params["brightness"].numpy()
    assert b.min() >= 0.6 and b.max() <= 1.4 and b.std() > 0.05
    y = op.apply(x, params)
    expected = np.clip(x.numpy() * b[:, None, None, None], 0, 1)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-6)
    for i in range(16):  # torchvision's adjust_brightness, one sample at a time
        torch.testing.assert_close(y[i], TF.adjust_brightness(x[i], float(b[i])), atol=1e-6, rtol=0)


def test_gamma_matches_numpy():
    x = rgb(8)
    op = Exposure(0.2, gamma=0.5)
    params = op.sample(x.shape, gen())
    b, g = params["brightness"].numpy()[:, None, None, None], params["gamma"].numpy()[:, None, None, None]
    np.testing.assert_allclose(op.apply(x, params).numpy(), np.clip(b * x.numpy() ** g, 0, 1), atol=1e-5)


def test_saturation_matches_numpy_itu601_blend_and_torchvision():
    x = rgb(16)
    op = Saturation(0.8)
    params = op.sample(x.shape, gen())
    s = params["saturation"].numpy()
    y = op.apply(x, params).numpy()
    xn = x.numpy()
    grey = 0.299 * xn[:, 0] + 0.587 * xn[:, 1] + 0.114 * xn[:, 2]  # ITU-R 601
    expected = np.clip(grey[:, None] + s[:, None, None, None] * (xn - grey[:, None]), 0, 1)
    np.testing.assert_allclose(y, expected, atol=1e-6)
    for i in range(16):  # torchvision rounds the red weight to 0.2989, hence the looser tolerance
        np.testing.assert_allclose(y[i], TF.adjust_saturation(x[i], float(s[i])).numpy(), atol=1e-4)


def test_saturation_is_a_no_op_on_grayscale():
    x = torch.rand(4, 1, 8, 8, generator=gen())
    assert torch.equal(Saturation(0.9)(x, gen()), x)


def test_contrast_matches_torchvision():
    x = rgb(8)
    op = Contrast(0.5)
    params = op.sample(x.shape, gen())
    y = op.apply(x, params)
    for i in range(8):  # torchvision's grey uses 0.2989 for red: differences of ~1e-5
        ref = TF.adjust_contrast(x[i], float(params["contrast"][i]))
        torch.testing.assert_close(y[i], ref, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------- crops


@pytest.mark.parametrize("mode,np_mode", [("reflect", "reflect"), ("zero", "constant")])
def test_pad_and_crop_matches_numpy_pad_and_slice(mode, np_mode):
    x = rgb(12, 9, 11)
    op = Crop(3, mode=mode)
    params = op.sample(x.shape, gen())
    y = op.apply(x, params).numpy()
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (3, 3), (3, 3)), mode=np_mode)
    for n in range(12):
        t, le = int(params["top"][n]), int(params["left"][n])
        np.testing.assert_array_equal(y[n], padded[n, :, t:t + 9, le:le + 11])
    assert len(set(params["top"].tolist())) > 1 and max(params["top"]) <= 6


def test_single_bright_pixel_lands_at_the_drawn_offset():
    x = torch.zeros(10, 1, 16, 16)
    x[:, :, 5, 7] = 1.0
    op = Crop(4, mode="zero")
    params = op.sample(x.shape, gen())
    y = op.apply(x, params)
    for n in range(10):
        # padded position (5 + 4, 7 + 4), window starts at (top, left)
        i, j = 9 - int(params["top"][n]), 11 - int(params["left"][n])
        assert y[n, 0, i, j] == 1.0 and y[n].sum() == 1.0


def test_crop_to_size_takes_windows_of_the_image():
    x = ramp(8, 12, 12)
    op = Crop(0, size=7)
    params = op.sample(x.shape, gen())
    y = op.apply(x, params)
    assert y.shape == (8, 1, 7, 7) and op.output_size((1, 12, 12)) == (1, 7, 7)
    for n in range(8):
        t, le = int(params["top"][n]), int(params["left"][n])
        assert torch.equal(y[n], x[n, :, t:t + 7, le:le + 7])


def test_translate_shifts_by_the_drawn_pixels_with_zero_fill():
    x = ramp(10, 10, 10)
    op = Translate(0.3)
    params = op.sample(x.shape, gen())
    y = op.apply(x, params).numpy()
    for n in range(10):
        dy, dx = int(params["dy"][n]), int(params["dx"][n])
        assert abs(dy) <= 3 and abs(dx) <= 3
        expected = np.zeros((10, 10), np.float32)
        src = x[n, 0].numpy()
        expected[max(dy, 0):10 + min(dy, 0), max(dx, 0):10 + min(dx, 0)] = \
            src[max(-dy, 0):10 + min(-dy, 0), max(-dx, 0):10 + min(-dx, 0)]
        np.testing.assert_array_equal(y[n, 0], expected)


# ---------------------------------------------------------------------------------------------------- scaling


def _zoom_theta(s: torch.Tensor) -> torch.Tensor:
    theta = torch.zeros(len(s), 2, 3)
    theta[:, 0, 0] = 1 / s
    theta[:, 1, 1] = 1 / s
    return theta


@pytest.mark.parametrize("mode,padding", [("zero", "zeros"), ("reflect", "reflection"), ("border", "border")])
def test_bilinear_scale_matches_grid_sample(mode, padding):
    x = rgb(8, 20, 17)
    op = Scale((0.5, 1.6), mode=mode)
    params = op.sample(x.shape, gen())
    grid = F.affine_grid(_zoom_theta(params["scale"]), list(x.shape), align_corners=False)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    torch.testing.assert_close(op.apply(x, params), ref, atol=1e-5, rtol=0)


def test_nearest_scale_matches_grid_sample_nearest():
    x = rgb(8, 20, 16)
    op = Scale((0.6, 1.5), interp="nearest")
    params = op.sample(x.shape, gen())
    grid = F.affine_grid(_zoom_theta(params["scale"]), list(x.shape), align_corners=False)
    ref = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    assert torch.equal(op.apply(x, params), ref)


def test_scale_maps_a_ramp_linearly_about_the_centre():
    w = 21  # odd: the centre column is a pixel
    x = (torch.arange(w, dtype=torch.float32) / (w - 1)).view(1, 1, 1, w).repeat(6, 1, 9, 1)
    op = Scale((1.0, 2.0))  # zoom in: every output reads inside the image
    params = op.sample(x.shape, gen())
    y = op.apply(x, params)
    c = (w - 1) / 2
    for n in range(6):
        s = float(params["scale"][n])
        expected = (c + (np.arange(w) - c) / s) / (w - 1)  # bilinear is exact on a linear ramp
        np.testing.assert_allclose(y[n, 0, 4].numpy(), expected, atol=1e-5)
        assert y[n, 0, 4, 10] == pytest.approx(0.5, abs=1e-6)  # the centre stays put


def test_resized_crop_matches_grid_sample_and_draws_areas_in_range():
    x = rgb(32, 24, 20)
    op = ResizedCrop(16, scale=(0.2, 0.6), ratio=(0.75, 4 / 3))
    params = op.sample(x.shape, gen())
    y = op.apply(x, params)
    assert y.shape == (32, 3, 16, 16)
    h, w = 24, 20
    theta = torch.zeros(32, 2, 3)
    theta[:, 0, 0] = params["width"] / w
    theta[:, 1, 1] = params["height"] / h
    theta[:, 0, 2] = (2 * params["left"] + params["width"]) / w - 1
    theta[:, 1, 2] = (2 * params["top"] + params["height"]) / h - 1
    grid = F.affine_grid(theta, [32, 3, 16, 16], align_corners=False)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)
    area = (params["height"] * params["width"] / (h * w)).numpy()
    ratio = (params["width"] / params["height"]).numpy()
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 0.6 + 1e-6
    assert ratio.min() >= 0.75 - 1e-5 and ratio.max() <= 4 / 3 + 1e-5
    assert (params["left"] + params["width"] <= w + 1e-4).all() and (params["top"] >= 0).all()


# ---------------------------------------------------------------------------------------------------- erasing


def test_erase_sets_a_rectangle_of_the_expected_area():
    x = rgb(64, 20, 20) * 0.9 + 0.1  # no natural zeros
    op = Erase(area=(0.1, 0.2), ratio=(0.5, 2.0), p=1.0)
    params = op.sample(x.shape, gen())
    y = op.apply(x, params)
    zero = (y == 0).all(dim=1).numpy()  # (N, H, W)
    for n in range(64):
        t, le = int(params["top"][n]), int(params["left"][n])
        eh, ew = int(params["height"][n]), int(params["width"][n])
        expected = np.zeros((20, 20), bool)
        expected[t:t + eh, le:le + ew] = True
        np.testing.assert_array_equal(zero[n], expected)
        # rounding each side to whole pixels moves the area by at most about one row and one column
        assert 0.1 * 400 - eh - ew <= zero[n].sum() <= 0.2 * 400 + eh + ew
    torch.testing.assert_close(y[torch.from_numpy(~zero)[:, None].expand_as(y)],
                               x[torch.from_numpy(~zero)[:, None].expand_as(x)], rtol=0, atol=0)


def test_erase_probability_leaves_other_samples_unchanged():
    x = rgb(400, 8, 8) * 0.9 + 0.1
    y = Erase(p=0.5)(x, gen())
    erased = (y != x).flatten(1).any(dim=1).float().mean().item()
    assert 0.42 < erased < 0.58


# ---------------------------------------------------------------------------------------------------- contracts


ALL_OPS = [cls() for cls in OPS.values()]


@pytest.mark.parametrize("op", ALL_OPS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ops_keep_range_dtype_and_device_and_do_not_modify_input(op, dtype):
    x = (rgb(8, 16, 16) * 1.2 - 0.1).clamp(0, 1).to(dtype)  # includes exact 0s and 1s
    before = x.clone()
    y = op(x, gen())
    assert y.dtype == dtype and y.device == x.device
    assert y.shape[:2] == x.shape[:2] and y.min() >= 0 and y.max() <= 1
    assert torch.equal(x, before)


def test_bfloat16_result_follows_float32():
    x = rgb(8, 16, 16)
    p = parse_pipeline("lecture,erase")
    y32, y16 = p(x, gen(3)), p(x.bfloat16(), gen(3))
    assert (y32 - y16.float()).abs().max() < 0.03  # bfloat16 keeps ~3 significant digits


@pytest.mark.parametrize("spec, atol", [
    ("flip,crop:3,vflip,scale:0.7-1.3:mode=reflect,translate:0.1,crop:2:mode=zero,exposure,resized_crop:12,"
     "scale:interp=nearest,erase:p=1", 0),
    # Zero-filled shifts read through by a zoom that also reads outside. Fused, a blend with an outside
    # tap is computed as v * (1 - w), one by one as v + w * (0 - v): equal up to float rounding.
    # A zoom then an exposure: the brightness factor is folded into the zoom's last pass.
    ("translate:0.3,crop:3:mode=zero,scale:0.5-1.5,exposure:0.5,saturation", 2e-7),
])
def test_fused_and_chunked_pipeline_equals_ops_applied_one_by_one(spec, atol):
    p = parse_pipeline(spec)
    x = rgb(10, 16, 14)
    g = gen(5)
    sequential = x
    for op in p:
        sequential = op(sequential, g)
    torch.testing.assert_close(p(x, gen(5)), sequential, rtol=0, atol=atol)
    p.chunk_bytes = 1  # one sample per chunk
    torch.testing.assert_close(p(x, gen(5)), sequential, rtol=0, atol=atol)


def test_uint8_input_is_converted_to_unit_float():
    x8 = (rgb(6) * 255).round().to(torch.uint8)
    p = parse_pipeline("lecture")
    torch.testing.assert_close(p(x8, gen()), p(x8.float() / 255, gen()), rtol=0, atol=1e-6)


def test_single_image_and_identity_pipeline():
    x = rgb(1)[0]
    assert parse_pipeline("crop:0:size=5")(x, gen()).shape == (3, 5, 5)
    batch = x[None]
    assert parse_pipeline("none")(batch) is batch and parse_pipeline("") == Pipeline()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_with_cpu_generator_matches_cpu():
    p = parse_pipeline("lecture,erase,translate")
    x = rgb(16, 32, 32)
    y = p(x.cuda(), gen(7))
    assert y.is_cuda
    torch.testing.assert_close(y.cpu(), p(x, gen(7)), atol=1e-5, rtol=0)
