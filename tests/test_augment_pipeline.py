"""cnnlab.augment pipelines: the string form, its errors, the adapters, the grid and `cnnlab augment`."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms import v2

from cnnlab.augment import (
    OPS,
    PRESETS,
    Crop,
    Erase,
    Exposure,
    Flip,
    PerSample,
    Pipeline,
    Scale,
    augment_batches,
    augment_grid,
    parse_pipeline,
    preview,
)
from cnnlab.errors import CnnlabError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- strings


def test_lecture_preset_is_the_five_ops_of_the_lecture():
    p = parse_pipeline("lecture")
    assert [op.name for op in p] == ["flip", "crop", "scale", "exposure", "saturation"]
    assert p == Pipeline([Flip(), Crop(pad=4), Scale(factor=(0.8, 1.2)), Exposure(brightness=0.3),
                          OPS["saturation"](amount=0.3)])


@pytest.mark.parametrize("text,canonical", [
    ("flip,crop:4,scale:0.8-1.2,exposure:0.3,saturation:0.3",
     "flip,crop:4,scale:0.8-1.2,exposure:0.3,saturation:0.3"),
    ("lecture,erase", "flip,crop:4,scale:0.8-1.2,exposure:0.3,saturation:0.3,erase:0.02-0.33"),
    (" Flip : p=1 , crop:pad=2:mode=zero ", "flip:p=1,crop:2:mode=zero"),
    ("crop:0:size=24,scale:1.5", "crop:0:size=24,scale:1.5-1.5"),
    ("exposure:0.2:gamma=0.1:p=0.5,resized_crop:32:scale=0.25-1", "exposure:0.2:gamma=0.1:p=0.5,resized_crop:32:scale=0.25-1"),
    ("", "none"),
    ("none", "none"),
])
def test_canonical_string_round_trip(text, canonical):
    p = parse_pipeline(text)
    assert str(p) == canonical
    assert parse_pipeline(str(p)) == p


def test_python_composition_prints_its_string():
    p = Pipeline([Flip(p=1.0), Crop(pad=4, mode="zero"), Erase(area=(0.1, 0.2))])
    assert str(p) == "flip:p=1,crop:4:mode=zero,erase:0.1-0.2"
    assert parse_pipeline(str(p)) == p


@st.composite
def ops(draw):
    cls = draw(st.sampled_from(list(OPS.values())))
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name == "p":
            kwargs["p"] = draw(st.floats(0, 1))
        elif f.type == "float":
            kwargs[f.name] = draw(st.floats(0, 0.99))
        elif f.type == "tuple[float, float]" and f.name != "area":
            lo = draw(st.floats(0.01, 2.0))
            kwargs[f.name] = (lo, lo + draw(st.floats(0, 2.0)))
    if cls.name == "erase":
        kwargs["area"] = tuple(sorted(draw(st.tuples(st.floats(0, 1), st.floats(0, 1)))))
    if cls.name == "resized_crop":
        kwargs["scale"] = tuple(sorted(draw(st.tuples(st.floats(0.01, 1), st.floats(0.01, 1)))))
    return cls(**kwargs)


@settings(max_examples=60, deadline=None)
@given(st.lists(ops(), max_size=5))
def test_any_pipeline_round_trips_through_its_string(op_list):
    p = Pipeline(op_list)
    assert parse_pipeline(str(p)) == p


@pytest.mark.parametrize("text,words", [
    ("flp", ["'flp'", "did you mean 'flip'", "crop", "lecture"]),
    ("crop:4:mod=zero", ["'mod'", "did you mean 'mode'", "pad, size, mode, p"]),
    ("crop:4:mode=zeros", ["'zeros'", "reflect, zero"]),
    ("scale:big", ["factor", "'big'"]),
    ("erase:0.5-0.2", ["area=0.5-0.2"]),
    ("flip:0.5", ["'0.5'", "p"]),
    ("flip:p=2", ["p=2"]),
    ("lecture:1", ["preset"]),
    ("flip,,crop", ["empty"]),
    ("crop:4:pad=3", ["twice"]),
])
def test_bad_strings_name_the_problem_and_what_exists(text, words):
    with pytest.raises(CnnlabError) as e:
        parse_pipeline(text)
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_sizes_that_do_not_fit_fail_before_work():
    with pytest.raises(CnnlabError, match="does not fit"):
        parse_pipeline("crop:0:size=40")(torch.rand(2, 1, 28, 28))
    with pytest.raises(CnnlabError, match="reflect"):
        parse_pipeline("crop:10")(torch.rand(2, 1, 8, 8))
    assert parse_pipeline("crop:2:size=30,resized_crop:16").output_size((1, 28, 28)) == (1, 16, 16)
    with pytest.raises(CnnlabError, match="int64"):
        parse_pipeline("flip")(torch.zeros(2, 1, 4, 4, dtype=torch.int64))


def test_presets_parse():
    for name in PRESETS:
        assert len(parse_pipeline(name)) >= 2


# ---------------------------------------------------------------------------------------------------- adapters


def test_per_sample_torchvision_adapter_is_reproducible_and_correct():
    x = torch.rand(6, 3, 10, 10, generator=gen())
    flip_all = PerSample(v2.RandomHorizontalFlip(p=1.0))
    assert torch.equal(flip_all(x), torch.flip(x, dims=[3]))
    jitter = PerSample(v2.ColorJitter(brightness=0.5))
    a, b = jitter(x, gen(1)), jitter(x, gen(1))
    assert torch.equal(a, b) and not torch.equal(a, jitter(x, gen(2)))
    # per sample: each image got its own brightness factor
    factors = (a / x).flatten(1).median(dim=1).values
    assert len(torch.unique(factors.round(decimals=3))) == 6


def test_augment_batches_converts_uint8_and_augments():
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(10)
    batches = [(images[:5], labels[:5]), (images[5:], labels[5:])]
    out = list(augment_batches(batches, "flip:p=1", generator=gen()))
    assert [len(x) for x, _ in out] == [5, 5] and torch.equal(out[1][1], labels[5:])
    expected = torch.flip(images.float() / 255, dims=[3])
    torch.testing.assert_close(torch.cat([x for x, _ in out]), expected, rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------------------------------- picture


def test_grid_layout_first_column_is_the_originals():
    x = torch.rand(3, 1, 28, 28, generator=gen())
    picture = augment_grid(x, "crop:0:size=20", copies=4, generator=gen())
    assert picture.dtype.name == "uint8" and picture.shape[2] == 3
    # 28x28 is enlarged 4x to 112 px cells; rows = 3 cells + 4 gaps of 2 px
    assert picture.shape[0] == 3 * 112 + 4 * 2
    first = picture[2:2 + 112:4, 2:2 + 112:4, 0]  # top-left cell, one pixel per source pixel
    expected = (x[0, 0] * 255).round().byte().numpy()
    assert (first == expected).all()


def test_preview_refuses_a_missing_folder_before_loading_data(tmp_path):
    with pytest.raises(CnnlabError, match="does not exist"):
        preview("no-such-dataset", "lecture", tmp_path / "missing" / "grid.png")
    with pytest.raises(CnnlabError, match="must end in"):
        preview("digits", "lecture", tmp_path / "grid.txt")


def test_cli_writes_a_png_that_pil_opens(tmp_path):
    out = tmp_path / "grid.png"
    proc = run_cli("augment", "--data", "digits", "--augment", "lecture,erase", "--out", str(out),
                   "--n", "3", "--copies", "4", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        # digits are 8x8 -> 96 px cells; 5 columns with a 2 px gap around each and an 8 px separator
        # after the originals; 3 rows
        assert im.size == (5 * 96 + 6 * 2 + 8, 3 * 96 + 4 * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary left behind


@pytest.mark.parametrize("args,word", [
    (["--augment", "flp"], "did you mean 'flip'"),
    (["--augment", "crop:4:siz=3"], "'siz'"),
    (["--out", "/no/such/folder/grid.png"], "does not exist"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, word):
    base = {"--data": "digits", "--out": str(tmp_path / "g.png")}
    for key, value in zip(args[::2], args[1::2], strict=True):
        base[key] = value
    proc = run_cli("augment", *[a for kv in base.items() for a in kv])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "g.png").exists()


def test_cli_list_shows_ops_and_presets():
    proc = run_cli("augment", "--list", check=True)
    for name in [*OPS, *PRESETS]:
        assert name in proc.stdout
