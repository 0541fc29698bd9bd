"""trivial / randaugment: per-sample op and magnitude, each sample checked against torchvision's
TrivialAugmentWide / RandAugment op implementation at that op and magnitude (independent truth)."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode, TrivialAugmentWide
from torchvision.transforms.v2 import RandAugment as TVRandAugment

from cnnlab.augment import RandAugment, TrivialAugment, parse_pipeline
from cnnlab.augment.autoaugment import NAMES, SIGNED, apply_ops, magnitudes
from cnnlab.errors import CnnlabError

TV = TrivialAugmentWide()


def reference(img: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """torchvision's own implementation of one op on one (C, H, W) float image."""
    return TV._apply_image_or_video_transform(img, name, magnitude, interpolation=InterpolationMode.NEAREST,
                                              fill=TV._fill)


def image(c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    x = torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(seed))
    x[0, :, 0, 0], x[0, :, -1, -1] = 0.0, 1.0
    return x


def atol(name: str, c: int) -> float:
    # cnnlab's Saturation / Contrast take ITU-R 601 luma 0.299 R where torchvision takes 0.2989 R;
    # Sharpness's blend rounds once more or less than torchvision's add with alpha
    if name in ("Color", "Contrast") and c == 3:
        return 2e-4
    return 1e-6 if name in ("Sharpness", "Contrast") else 0.0


@pytest.mark.parametrize("space,tv_cls", [("wide", TrivialAugmentWide), ("randaugment", TVRandAugment)])
def test_magnitude_tables_are_torchvisions(space, tv_cls):
    for bins, (h, w) in ((31, (12, 10)), (11, (32, 32))):
        table = magnitudes(space, bins, h, w)
        for i, name in enumerate(NAMES):
            fn, signed = tv_cls._AUGMENTATION_SPACE[name]
            ref = fn(bins, h, w)
            assert torch.equal(table[i], ref.double() if ref is not None else torch.zeros(bins, dtype=torch.float64))
            assert signed == (name in SIGNED), name


@pytest.mark.parametrize("c,h,w", [(1, 12, 12), (3, 10, 14)])
def test_every_op_at_several_bins_and_signs_matches_torchvision_in_one_batch(c, h, w):
    """One batch holds every op at the extreme and some middle bins, both signs; each sample equals
    torchvision on that sample (bin 20 is 90 degrees: torchvision's exact rotation on square images)."""
    table = magnitudes("wide", 31, h, w)
    rows = [(i, float(table[i, b]) * s) for i, name in enumerate(NAMES) for b in (0, 1, 7, 20, 30)
            for s in ((1, -1) if name in SIGNED else (1,))]
    x = image(c, h, w).expand(len(rows), c, h, w).clone()
    x[1::2] = image(c, h, w, seed=1)  # two different images
    op = torch.tensor([r[0] for r in rows])
    m = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    y = apply_ops(x, op, m)
    for k, (i, mag) in enumerate(rows):
        ref = reference(x[k], NAMES[i], mag)
        torch.testing.assert_close(y[k], ref, rtol=0, atol=atol(NAMES[i], c), msg=f"{NAMES[i]} at {mag}")


def test_trivial_draws_op_bin_and_sign_per_sample_and_applies_them():
    x = image(3, 16, 16).expand(64, 3, 16, 16).clone()
    op = TrivialAugment()
    g = torch.Generator().manual_seed(3)
    params = op.sample(x.shape, torch.Generator().manual_seed(3))
    y = op(x, g)
    assert len(torch.unique(params["op"])) >= 10  # one batch, many different ops
    table = magnitudes("wide", 31, 16, 16)
    for k in range(len(x)):
        i, mag = int(params["op"][k]), float(params["magnitude"][k])
        assert abs(mag) in table[i].tolist() or (mag == 0 and NAMES[i] in ("Identity", "AutoContrast", "Equalize"))
        torch.testing.assert_close(y[k], reference(x[k], NAMES[i], mag), rtol=0, atol=atol(NAMES[i], 3))


def test_op_choice_is_uniform_over_the_14_ops():
    ops = TrivialAugment().sample((14_000, 1, 8, 8), torch.Generator().manual_seed(0))["op"]
    counts = torch.bincount(ops, minlength=14).float()
    assert (counts - 1000).abs().max() < 130  # 4 standard deviations of a binomial(14000, 1/14)


def test_randaugment_applies_n_ops_in_turn_at_magnitude_m():
    x = image(1, 14, 14).expand(40, 1, 14, 14).clone()
    op = parse_pipeline("randaugment:n=2:m=9").ops[0]
    params = op.sample(x.shape, torch.Generator().manual_seed(5))
    y = op.apply(x, params)
    table = magnitudes("randaugment", 31, 14, 14)
    assert len(torch.unique(params["op0"] * 14 + params["op1"])) > 20  # pairs drawn per sample
    for k in range(len(x)):
        ref = x[k]
        for r in range(2):
            i, mag = int(params[f"op{r}"][k]), float(params[f"magnitude{r}"][k])
            assert abs(mag) == float(table[i, 9])
            ref = reference(ref, NAMES[i], mag)
        torch.testing.assert_close(y[k], ref, rtol=0, atol=2e-6)


def test_probability_leaves_skipped_samples_unchanged():
    x = image(3, 8, 8).expand(200, 3, 8, 8).clone()
    params = TrivialAugment(p=0.25).sample(x.shape, torch.Generator().manual_seed(1))
    skipped = (params["op"] == 0).float().mean().item()
    assert 0.72 < skipped < 0.86  # 0.75 skipped + 0.25 / 14 drawing Identity
    y = RandAugment(p=0.0)(x, torch.Generator())
    assert torch.equal(y, x)


def test_strings_round_trip_and_bad_ones_say_what_is_wrong():
    for text, canonical in (("trivial", "trivial"), ("randaugment:n=2:m=9", "randaugment"),
                            ("randaugment:n=3:m=5:p=0.5", "randaugment:n=3:m=5:p=0.5"), ("flip,trivial:bins=11", "flip,trivial:bins=11")):
        p = parse_pipeline(text)
        assert str(p) == canonical and parse_pipeline(str(p)) == p
    for text, word in (("randaugment:m=31", "m=31"), ("randaugment:n=-1", "n=-1"), ("trivial:bins=1", "bins=1"),
                       ("randaugment:q=2", "'q'"), ("trivial:p=2", "p=2")):
        with pytest.raises(CnnlabError, match=word):
            parse_pipeline(text)
    with pytest.raises(CnnlabError, match="channels"):
        parse_pipeline("trivial")(torch.rand(2, 4, 8, 8))
