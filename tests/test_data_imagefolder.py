"""imagefolder: layouts, broken files, mode conversion checked against independent numpy arithmetic,
streaming versus in-memory."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import load_dataset
from cnnlab.data.imagefolder import decode, load_imagefolder
from cnnlab.errors import CnnlabError

RNG = np.random.default_rng(0)


def rgb(h=6, w=6) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, arr: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    im.save(path, **kwargs)
    return path


def make_folder(root: Path, per_class: int = 5, classes=("cat", "dog"), size=(6, 6)) -> dict[Path, np.ndarray]:
    truth = {}
    for c in classes:
        for i in range(per_class):
            arr = rgb(*size)
            truth[save(root / c / f"{i:02d}.png", arr)] = arr
    return truth


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A 60-byte PNG whose header claims width x height pixels (900 M > 2 x Pillow's limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


# ---------------------------------------------------------------------------------------- broken files
def test_broken_files_reported_and_skipped(tmp_path):
    make_folder(tmp_path, per_class=5)
    bad = {
        tmp_path / "cat" / "zero.jpg": b"",
        tmp_path / "cat" / "notes.png": b"this is text, not a PNG\n",
        tmp_path / "dog" / "random.bin": bytes(RNG.integers(0, 256, 500, dtype=np.uint8)),
        tmp_path / "dog" / "cut.jpg": truncated_jpeg(),
        tmp_path / "dog" / "bomb.png": bomb_png(),
    }
    for p, data in bad.items():
        p.write_bytes(data)
    limit = Image.MAX_IMAGE_PIXELS
    lines = []
    ds = load_imagefolder(tmp_path, report=lines.append)
    assert Image.MAX_IMAGE_PIXELS == limit  # the decompression-bomb guard stays on
    assert {p for p, _ in ds.skipped} == set(bad)
    reasons = dict(ds.skipped)
    assert "DecompressionBomb" in reasons[tmp_path / "dog" / "bomb.png"]
    assert "truncated" in reasons[tmp_path / "dog" / "cut.jpg"].lower()
    for p in bad:  # one warning line per file, naming it, plus the count
        assert sum(str(p) in line for line in lines) == 1
    assert lines[-1].startswith("cnnlab: warning: skipped 5 of 15 files")
    assert len(ds.train) + len(ds.test) == 10


def test_strict_stops_naming_the_file(tmp_path):
    make_folder(tmp_path, per_class=3)
    (tmp_path / "dog" / "cut.jpg").write_bytes(truncated_jpeg())
    with pytest.raises(CnnlabError, match=r"cut\.jpg"):
        load_imagefolder(tmp_path, strict=True, report=lambda s: None)
    (tmp_path / "dog" / "cut.jpg").unlink()
    (tmp_path / "cat" / "bomb.png").write_bytes(bomb_png())
    with pytest.raises(CnnlabError, match=r"bomb\.png.*DecompressionBomb"):
        load_dataset(f"imagefolder:{tmp_path}", strict=True)


def test_folder_errors(tmp_path):
    with pytest.raises(CnnlabError, match="not a folder"):
        load_imagefolder(tmp_path / "missing")
    (tmp_path / "only").mkdir()
    save(tmp_path / "only" / "a" / "x.png", rgb())
    with pytest.raises(CnnlabError, match="only one class"):
        load_imagefolder(tmp_path / "only")
    save(tmp_path / "two" / "a" / "x.png", rgb())
    (tmp_path / "two" / "b").mkdir()
    with pytest.raises(CnnlabError, match="class folder .*b is empty"):
        load_imagefolder(tmp_path / "two")
    (tmp_path / "none").mkdir()
    with pytest.raises(CnnlabError, match="no class sub-folders"):
        load_imagefolder(tmp_path / "none")
    with pytest.raises(CnnlabError, match="needs a path"):
        load_dataset("imagefolder:")


def test_sizes_must_match_unless_image_size(tmp_path):
    save(tmp_path / "a" / "1.png", rgb(6, 6))
    save(tmp_path / "a" / "2.png", rgb(6, 6))
    save(tmp_path / "b" / "1.png", rgb(10, 8))
    save(tmp_path / "b" / "2.png", rgb(6, 6))
    with pytest.raises(CnnlabError, match="differ in size.*image_size"):
        load_imagefolder(tmp_path)
    ds = load_imagefolder(tmp_path, image_size=4)
    assert ds.input_size == (3, 4, 4)


# ------------------------------------------------------------------------------------------ conversion
def _composite(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Alpha over white, written out independently: c*a/255 + 255*(1 - a/255), rounded half up."""
    out = np.empty(c.shape, np.uint8)
    for idx in np.ndindex(*c.shape):
        alpha = int(a[idx[:2]])
        out[idx] = int(np.floor(int(c[idx]) * alpha / 255 + 255 * (1 - alpha / 255) + 0.5))
    return out


def test_modes_converted_consistently(tmp_path):
    base = tmp_path / "train"
    g = RNG.integers(0, 256, (5, 5), dtype=np.uint8)
    col = rgb(5, 5)
    rgba = np.dstack([col, RNG.integers(0, 256, (5, 5), dtype=np.uint8)])
    la = np.dstack([g, RNG.integers(0, 256, (5, 5), dtype=np.uint8)])
    g16 = RNG.integers(0, 65536, (5, 5), dtype=np.uint16)
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    idx = RNG.integers(0, 256, (5, 5), dtype=np.uint8)

    files = {
        "L.png": save(base / "a" / "L.png", g, "L"),
        "RGB.bmp": save(base / "a" / "RGB.bmp", col, "RGB"),
        "RGBA.png": save(base / "a" / "RGBA.png", rgba, "RGBA"),
        "LA.png": save(base / "b" / "LA.png", la, "LA"),
        "RGB.webp": save(base / "b" / "RGB.webp", col, "RGB", lossless=True) if _has_webp() else None,
    }
    p_img = Image.fromarray(idx, "P")
    p_img.putpalette(palette.reshape(-1).tolist())
    p_img.save(base / "b" / "P.png")
    files["P.png"] = base / "b" / "P.png"
    Image.fromarray(g16).save(base / "b" / "I16.png")
    files["I16.png"] = base / "b" / "I16.png"
    with Image.open(files["I16.png"]) as im:
        assert im.mode in ("I;16", "I"), im.mode  # really a 16-bit file
    save(tmp_path / "test" / "a" / "t.png", col)
    save(tmp_path / "test" / "b" / "t.png", col)

    expected = {
        "L.png": np.dstack([g] * 3),
        "RGB.bmp": col,
        "RGB.webp": col,
        "RGBA.png": _composite(col, rgba[..., 3]),
        "LA.png": np.dstack([_composite(g[..., None], la[..., 1])[..., 0]] * 3),
        "P.png": palette[idx],
        "I16.png": np.dstack([np.floor(g16 / 257 + 0.5).astype(np.uint8)] * 3),
    }
    ds = load_imagefolder(tmp_path)
    assert ds.input_size == (3, 5, 5) and ds.classes == ["a", "b"]
    order = sorted((p for p in files.values() if p is not None), key=lambda p: (p.parent.name, p.name))
    for i, p in enumerate(order):
        got = ds.train.images[i].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, expected[p.name], err_msg=p.name)
    assert ds.train.labels.tolist() == [0 if p.parent.name == "a" else 1 for p in order]


def _has_webp() -> bool:
    from PIL import features

    return bool(features.check("webp"))


def test_all_gray_folder_stays_one_channel(tmp_path):
    g = RNG.integers(0, 256, (4, 4), dtype=np.uint8)
    g16 = RNG.integers(0, 65536, (4, 4), dtype=np.uint16)
    la = np.dstack([g, np.full((4, 4), 128, np.uint8)])
    save(tmp_path / "a" / "1.png", g, "L")
    Image.fromarray(g16).save(tmp_path / "a" / "2.png")
    save(tmp_path / "b" / "3.png", la, "LA")
    Image.fromarray(g > 127).convert("1").save(tmp_path / "b" / "4.png")
    ds = load_imagefolder(tmp_path)
    assert ds.input_size == (1, 4, 4)
    np.testing.assert_array_equal(decode(tmp_path / "a" / "2.png", True, None)[0],
                                  np.floor(g16 / 257 + 0.5).astype(np.uint8))
    np.testing.assert_array_equal(decode(tmp_path / "b" / "4.png", True, None)[0], np.where(g > 127, 255, 0))
    np.testing.assert_array_equal(decode(tmp_path / "b" / "3.png", True, None)[0],
                                  _composite(g[..., None], la[..., 1])[..., 0])


def test_resize_shorter_side_then_centre_crop(tmp_path):
    arr = rgb(20, 40)
    p = save(tmp_path / "x.png", arr)
    got = decode(p, False, 10)
    ref = np.asarray(Image.fromarray(arr).resize((20, 10), Image.Resampling.BILINEAR))[:, 5:15]
    np.testing.assert_array_equal(got.transpose(1, 2, 0), ref)


# ------------------------------------------------------------------------------------- layouts, splits
def test_flat_folder_split_is_seeded_and_stratified(tmp_path):
    make_folder(tmp_path, per_class=10, classes=("a", "b", "c"))
    ds = load_imagefolder(tmp_path, val_fraction=0.25, seed=1)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 6, 6)  # 20% test, then 25% of the rest
    assert torch.bincount(ds.test.labels).tolist() == [2, 2, 2]
    assert torch.bincount(ds.val.labels).tolist() == [2, 2, 2]
    again = load_imagefolder(tmp_path, val_fraction=0.25, seed=1)
    other = load_imagefolder(tmp_path, val_fraction=0.25, seed=2)
    assert torch.equal(ds.val.images, again.val.images)
    assert torch.equal(ds.test.images, other.test.images)  # the test split does not move with the seed
    assert not torch.equal(ds.val.images, other.val.images)
    all_images = torch.cat([ds.train.images, ds.val.images, ds.test.images])
    assert len({tuple(x.flatten().tolist()) for x in all_images}) == 30  # a partition: nothing lost or doubled
    flat = ds.train.images.permute(1, 0, 2, 3).reshape(3, -1).double() / 255
    assert ds.mean == pytest.approx(flat.mean(1).tolist(), abs=1e-9)
    assert ds.std == pytest.approx(flat.std(1, unbiased=False).tolist(), abs=1e-9)


def test_train_test_val_subfolders(tmp_path):
    make_folder(tmp_path / "train", per_class=4)
    make_folder(tmp_path / "test", per_class=2)
    ds = load_imagefolder(tmp_path)
    assert (len(ds.train), len(ds.test), ds.val) == (8, 4, None)
    make_folder(tmp_path / "val", per_class=1)
    ds = load_imagefolder(tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 2, 4)
    with pytest.raises(CnnlabError, match="val_fraction must be 0"):
        load_imagefolder(tmp_path, val_fraction=0.1)
    make_folder(tmp_path / "test", per_class=1, classes=("bird",))
    with pytest.raises(CnnlabError, match="'bird' that train/ does not have"):
        load_imagefolder(tmp_path)


def test_streaming_gives_the_same_batches_as_memory(tmp_path):
    truth = make_folder(tmp_path, per_class=7, classes=("a", "b", "c"))
    mem = load_imagefolder(tmp_path, val_fraction=0.2)
    disk = load_imagefolder(tmp_path, val_fraction=0.2, memory_limit=0, num_workers=0)
    assert type(disk.train).__name__ == "FolderSplit" and not hasattr(disk.train, "images")
    assert disk.mean == pytest.approx(mem.mean, abs=1e-9) and disk.std == pytest.approx(mem.std, abs=1e-9)
    for split in ("train", "val", "test"):
        a = list(getattr(mem, split).batches(4, shuffle=True, seed=3, epoch=2))
        b = list(getattr(disk, split).batches(4, shuffle=True, seed=3, epoch=2))
        assert len(a) == len(b)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and xb.dtype == torch.uint8
    served = {tuple(x.permute(1, 2, 0).flatten().tolist()) for x, _ in
              ((img, None) for xb, _ in disk.train.batches(5) for img in xb)}
    assert served <= {tuple(v.flatten().tolist()) for v in truth.values()}


def test_streaming_with_worker_processes(tmp_path, monkeypatch):
    import cnnlab.data.imagefolder as imagefolder

    make_folder(tmp_path, per_class=6)
    (tmp_path / "cat" / "cut.jpg").write_bytes(truncated_jpeg())
    mem = load_imagefolder(tmp_path, report=lambda s: None)
    monkeypatch.setattr(imagefolder, "PARALLEL_FROM", 1)  # the up-front check runs in workers too
    disk = load_imagefolder(tmp_path, memory_limit=0, num_workers=2, report=lambda s: None)
    assert [p.name for p, _ in disk.skipped] == ["cut.jpg"]
    assert disk.mean == pytest.approx(mem.mean, abs=1e-9)
    xa = torch.cat([x for x, _ in mem.train.batches(3, shuffle=True, epoch=1)])
    xb = torch.cat([x for x, _ in disk.train.batches(3, shuffle=True, epoch=1)])
    assert torch.equal(xa, xb)


def test_streamed_file_that_changed_is_named(tmp_path):
    make_folder(tmp_path, per_class=3)
    disk = load_imagefolder(tmp_path, memory_limit=0, num_workers=0)
    victim = disk.train.paths[0]
    victim.write_bytes(b"gone")
    with pytest.raises(CnnlabError, match=victim.name):
        list(disk.train.batches(2))


# --------------------------------------------------------------------- what the walk reads (issue 15, class 5)
def image_set(*splits) -> list[tuple]:
    """Every image of the splits as a tuple of pixel values (duplicates kept)."""
    return [tuple(x.flatten().tolist()) for s in splits for x in s.images]


def test_link_cycle_does_not_duplicate_images_into_train_and_test(tmp_path):
    root = tmp_path / "data"
    truth = make_folder(root, per_class=10)
    (root / "cat" / "again").symlink_to(root / "cat")  # a folder that contains itself
    (root / "dog" / "up").symlink_to(root)  # back to the root: would walk cat/ again under dog/
    lines = []
    ds = load_imagefolder(root, report=lines.append)
    train, test = image_set(ds.train), image_set(ds.test)
    assert len(train) + len(test) == len(truth) == 20  # each image once
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(tuple(a.transpose(2, 0, 1).flatten().tolist()) for a in truth.values())
    assert torch.bincount(torch.cat([ds.train.labels, ds.test.labels])).tolist() == [10, 10]
    skipped = dict(ds.skipped)
    assert set(skipped) == {root / "cat" / "again", root / "dog" / "up"}
    assert all(why.startswith("folder seen before") for why in skipped.values())
    assert lines[-1] == f"cnnlab: warning: skipped 2 of 22 files under {root} (2 folder seen before; listed above)"


def test_fifo_named_png_is_skipped_without_hanging(tmp_path):
    make_folder(tmp_path, per_class=3)
    os.mkfifo(tmp_path / "cat" / "x.png")  # opening it for reading would wait for a writer forever
    code = ("import sys; from cnnlab.data.imagefolder import load_imagefolder; "
            f"ds = load_imagefolder({str(tmp_path)!r}); print(len(ds.train) + len(ds.test)); print(ds.skipped)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    count, skipped = proc.stdout.splitlines()
    assert count == "6" and "x.png" in skipped and "not a regular file: a FIFO" in skipped
    assert f"skipped {tmp_path / 'cat' / 'x.png'}: not a regular file: a FIFO" in proc.stderr
    with pytest.raises(CnnlabError, match=r"x\.png \(not a regular file: a FIFO\)"):
        load_imagefolder(tmp_path, strict=True)  # stat only, so this cannot hang either


def test_links_leaving_the_root_are_not_followed(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    make_folder(root, per_class=3)
    other = make_folder(outside, per_class=4, classes=("cat",))
    (root / "cat" / "etc").symlink_to("/etc")
    (root / "dog" / "more").symlink_to(outside / "cat")  # a folder of real images, outside the root
    (root / "dog" / "one.png").symlink_to(next(iter(other)))  # a single file outside
    (root / "bird").symlink_to(outside / "cat")  # a whole class folder outside
    (root / "LICENSE").symlink_to(next(iter(other)))  # beside the class folders: no class, not reported
    os.mkfifo(root / "pipe")  # the same
    opened = []
    real_open = os.open
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", lambda p, *a, **k: opened.append(Path(p)) or real_open(p, *a, **k))
        ds = load_imagefolder(root, report=lambda s: None)
    assert ds.classes == ["cat", "dog"] and len(ds.train) + len(ds.test) == 6
    assert opened and all(p.resolve().is_relative_to(root.resolve()) for p in opened)
    skipped = dict(ds.skipped)
    assert set(skipped) == {root / n for n in ("cat/etc", "dog/more", "dog/one.png", "bird")}
    assert skipped[root / "cat" / "etc"] == f"link leaving the folder: a link to /etc, outside {root.resolve()}"


def test_a_file_linked_twice_is_read_once(tmp_path):
    truth = make_folder(tmp_path / "train", per_class=3)
    make_folder(tmp_path / "test", per_class=2)
    first = tmp_path / "train" / "cat" / "00.png"
    os.link(first, tmp_path / "train" / "cat" / "copy.png")  # hard link in the same class
    os.link(first, tmp_path / "test" / "cat" / "leak.png")  # the same file in the test split
    (tmp_path / "test" / "dog" / "alias.png").symlink_to(first)  # and a symbolic link to it
    opened = []
    real_open = os.open
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", lambda p, *a, **k: opened.append(Path(p)) or real_open(p, *a, **k))
        ds = load_imagefolder(tmp_path, report=lambda s: None)
    assert (len(ds.train), len(ds.test)) == (6, 4)
    assert not set(image_set(ds.train)) & set(image_set(ds.test))
    assert tuple(truth[first].transpose(2, 0, 1).flatten().tolist()) in image_set(ds.train)
    assert not {p.name for p in opened} & {"copy.png", "leak.png", "alias.png"}  # never opened
    skipped = dict(ds.skipped)
    assert {p.name for p in skipped} == {"copy.png", "leak.png", "alias.png"}
    assert all(why == f"file seen before: the same file as {first}" for why in skipped.values())
