"""`cnnlab data audit`: balance, statistics, unreadable files, exact and near duplicates.

Truth from outside the code under test: a synthetic image folder whose planted copies are known, scipy's
DCT for the perceptual hash, a brute-force all-pairs popcount for the multi-index search, numpy for the
statistics.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cnnlab.cli.main import main
from cnnlab.data.audit import (
    HAMMING,
    audit,
    cross_split_warning,
    dct_matrix,
    hamming_pairs,
    phash,
    thumbnails,
)
from cnnlab.data.dataset import in_memory_dataset


def shapes_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A random RGB picture: a few filled rectangles and ellipses on a coloured ground, with mild noise.
    (Edges matter: a featureless, blurry picture has DCT coefficients close to their median, whose pHash
    bits flip under re-encoding; see cnnlab.data.audit.)"""
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(5):
        x0, y0 = rng.integers(0, size - 8, 2)
        x1, y1 = x0 + rng.integers(6, size // 2), y0 + rng.integers(6, size // 2)
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape([int(x0), int(y0), int(x1), int(y1)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-8, 9, (size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, set[tuple[str, str]]]:
    """train/ (3 classes x 10), test/ (3 x 4 own images + 5 copies of train images), one duplicate inside
    train and one unreadable file. Returns the root and the 5 planted (train, test) path pairs."""
    root = tmp_path_factory.mktemp("audit") / "folder"
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 10), ("test", 4)):
        for c in ("a", "b", "c"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(shapes_image(rng)).save(root / split / c / f"{i}.png")
    planted = set()
    for k, (c, i) in enumerate((("a", 1), ("a", 7), ("b", 2), ("c", 3), ("c", 9))):
        src = root / "train" / c / f"{i}.png"
        if k == 4:  # resized and re-encoded: a near-duplicate, not an exact one
            dst = root / "test" / c / "copy-resized.jpg"
            with Image.open(src) as im:
                im.resize((48, 48), Image.Resampling.BICUBIC).save(dst, quality=90)
        else:
            dst = root / "test" / c / f"copy-{k}.png"
            shutil.copy(src, dst)
        planted.add((str(src.relative_to(root)), str(dst.relative_to(root))))
    shutil.copy(root / "train" / "b" / "5.png", root / "train" / "b" / "again.png")  # within train
    (root / "test" / "b" / "empty.png").write_bytes(b"")  # unreadable
    return root, planted


def test_exactly_the_five_planted_copies_are_found_across_splits(planted, tmp_path):
    root, copies = planted
    result = audit(f"imagefolder:{root}", out=tmp_path / "out")
    across = {(p["a"], p["b"]) for p in result.exact + result.near if p["where"] == "train/test"}
    assert across == copies
    assert [p["where"] for p in result.near] == ["train/test"]  # the JPEG copy is near, the others exact
    assert result.near[0]["b"].endswith("copy-resized.jpg") and result.near[0]["hamming"] <= HAMMING
    within = [(p["a"], p["b"]) for p in result.exact if p["where"] == "within train"]
    assert within == [("train/b/5.png", "train/b/again.png")]
    assert [Path(p).name for p, _ in result.unreadable] == ["empty.png"]
    # counts, balance, sizes and modes
    assert result.splits["train"]["per_class"] == {"a": 10, "b": 11, "c": 10}
    assert result.splits["train"]["balance"] == pytest.approx(10 / 11)
    assert result.splits["test"]["sizes"] == {"32x32": 16, "48x48": 1}
    assert result.splits["test"]["modes"] == {"RGB": 17}
    # per-channel statistics of train, against numpy over the files
    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted((root / "train").rglob("*.png"))]) / 255.0
    np.testing.assert_allclose(result.splits["train"]["mean"], pixels.mean((0, 1, 2)), atol=1e-9)
    np.testing.assert_allclose(result.splits["train"]["std"], pixels.std((0, 1, 2)), atol=1e-9)
    # the files
    with Image.open(tmp_path / "out" / "pairs.png") as img:
        assert img.format == "PNG" and img.width > 400
    saved = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert saved["duplicates"]["exact"]["counts"] == {"train/test": 4, "within train": 1}
    assert saved["duplicates"]["near"]["counts"] == {"train/test": 1}


def test_phash_is_the_dct_of_the_thumbnail_against_scipy():
    fft = pytest.importorskip("scipy.fft")
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (32, 32))
    # scipy's unnormalised DCT-II is 2 * sum_i x_i cos(pi (2i + 1) k / 2n)
    ref = fft.dct(fft.dct(x, type=2, axis=0), type=2, axis=1) / 4
    d = dct_matrix(32).numpy()
    np.testing.assert_allclose(d @ x @ d.T, ref, rtol=1e-10, atol=1e-8)
    low = ref[:8, :8].ravel()
    want = int("".join("1" if v > np.median(low) else "0" for v in low), 2)
    assert int(phash(torch.from_numpy(x).float()[None])[0]) == want


def test_multi_index_search_finds_every_pair_a_brute_force_finds():
    rng = np.random.default_rng(2)
    h = rng.integers(0, 2**63, 600, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 600, dtype=np.uint64)
    for k in range(0, 200, 2):  # plant pairs 0..6 bits apart
        flips = rng.choice(64, size=k % 7, replace=False)
        h[k + 1] = h[k] ^ np.uint64(sum(1 << int(f) for f in flips))
    i, j = hamming_pairs(h, HAMMING)
    dist = np.bitwise_count(h[:, None] ^ h[None, :])
    bi, bj = np.nonzero(np.triu(dist <= HAMMING, 1))
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == sorted(zip(bi.tolist(), bj.tolist(), strict=True))
    assert len(bi) >= 70


def test_thumbnail_gray_is_pillows_luma():
    rgb = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ours = thumbnails(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0].numpy()
    np.testing.assert_allclose(ours, np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64), atol=0.51)


def test_training_warns_on_cross_split_exact_duplicates():
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8, generator=g)
    test = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(50) % 2
    ds = in_memory_dataset("toy", ["x", "y"], "here", (train, labels), (test, labels[:20]))
    assert cross_split_warning(ds) == ""
    test[7] = train[31]
    ds = in_memory_dataset("toy", ["x", "y"], "here", (train, labels), (test, labels[:20]))
    note = cross_split_warning(ds)
    assert note.startswith("1 image(s) appear in two splits") and "train[31] = test[7]" in note


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    for argv in (["data", "audit", f"imagefolder:{tmp_path / 'nope'}", "--out", str(tmp_path / "o1")],
                 ["data", "audit", "nope", "--out", str(tmp_path / "o2")],
                 ["data", "audit", "digits", "--out", str(tmp_path / "a-file")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
