"""Parsers against files written here in the official formats (byte layouts from the datasets' own pages),
and the real Fashion-MNIST from the Debian package when it is installed."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data import formats, sources
from cnnlab.errors import CnnlabError

FASHION = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------------------------- IDX
def idx_bytes(arr: np.ndarray, type_code: int, be_dtype: str) -> bytes:
    """IDX as documented on yann.lecun.com: 0x0000, type, ndim, big-endian uint32 dims, big-endian data."""
    header = bytes([0, 0, type_code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(be_dtype).tobytes()


def test_idx_images_and_labels_gz(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    raw = idx_bytes(images, 0x08, ">u1")
    assert raw[:4] == b"\x00\x00\x08\x03"  # the magic 2051 of the MNIST image files
    (tmp_path / "img.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "lab.gz").write_bytes(gzip.compress(idx_bytes(labels, 0x08, ">u1")))
    x, y = formats.read_idx_pair(tmp_path / "img.gz", tmp_path / "lab.gz")
    assert x.shape == (7, 1, 5, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[:, 0], images)
    np.testing.assert_array_equal(y, labels.astype(np.int64))
    assert y.dtype == np.int64


@pytest.mark.parametrize("code,be", [(0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8"), (0x09, ">i1")])
def test_idx_other_types_big_endian(tmp_path, code, be):
    values = [[1, -2, 3], [4, 5, -6]] if be == ">i1" else [[1, -2, 300], [4, 5, -600]]
    arr = np.array(values, dtype=be)
    (tmp_path / "a.idx").write_bytes(idx_bytes(arr, code, be))  # uncompressed works too
    out = formats.read_idx(tmp_path / "a.idx")
    np.testing.assert_array_equal(out, arr.astype(arr.dtype.newbyteorder("=")))
    assert out.dtype.isnative


def test_idx_bad_magic_and_wrong_length(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x1f\x00\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(CnnlabError, match="not an IDX file"):
        formats.read_idx(tmp_path / "bad")
    short = idx_bytes(np.zeros((4, 2, 2), np.uint8), 0x08, ">u1")[:-3]
    (tmp_path / "short").write_bytes(short)
    with pytest.raises(CnnlabError, match="needs 16 data bytes"):
        formats.read_idx(tmp_path / "short")


def test_idx_truncated_or_corrupt_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(4000, dtype=np.uint8).reshape(10, 20, 20) % 7, 0x08, ">u1"))
    (tmp_path / "trunc.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CnnlabError, match="truncated gzip"):
        formats.read_idx(tmp_path / "trunc.gz")
    flipped = bytearray(data)
    flipped[-6] ^= 0xFF  # inside the CRC-32 trailer
    (tmp_path / "crc.gz").write_bytes(bytes(flipped))
    with pytest.raises(CnnlabError, match="damaged gzip"):
        formats.read_idx(tmp_path / "crc.gz")


def test_idx_label_count_mismatch(tmp_path):
    (tmp_path / "i").write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8), 0x08, ">u1"))
    (tmp_path / "l").write_bytes(idx_bytes(np.zeros(4, np.uint8), 0x08, ">u1"))
    with pytest.raises(CnnlabError, match="expected 3 labels"):
        formats.read_idx_pair(tmp_path / "i", tmp_path / "l")


# ----------------------------------------------------------------------------------------------- CIFAR
def _pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)  # the protocol of the official (Python 2) batches


def make_cifar_tar(path: Path, variant: str, n_train_per_batch: int = 6, n_test: int = 4, seed: int = 0) -> dict:
    """Write a CIFAR-10/100 python tar.gz with the official member names and dict keys (bytes keys)."""
    rng = np.random.default_rng(seed)
    truth = {"train": [], "test": None}
    with tarfile.open(path, "w:gz") as tf:
        def add(name, payload: bytes):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))

        if variant == "cifar10":
            folder, names = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)]
            add(f"{folder}/batches.meta", _pickle({b"num_cases_per_batch": n_train_per_batch,
                                                    b"label_names": [f"c{i}".encode() for i in range(10)],
                                                    b"num_vis": 3072}))
            for i, name in enumerate(names):
                data = rng.integers(0, 256, (n_train_per_batch, 3072), dtype=np.uint8)
                labels = [int(v) for v in rng.integers(0, 10, n_train_per_batch)]
                truth["train"].append((data, labels))
                add(f"{folder}/{name}", _pickle({b"batch_label": f"training batch {i + 1} of 5".encode(),
                                                 b"labels": labels, b"data": data,
                                                 b"filenames": [b"x.png"] * n_train_per_batch}))
            data = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, n_test)]
            truth["test"] = (data, labels)
            add(f"{folder}/test_batch", _pickle({b"batch_label": b"testing batch 1 of 1", b"labels": labels,
                                                 b"data": data, b"filenames": [b"y.png"] * n_test}))
            add(f"{folder}/readme.html", b"<html></html>")
        else:
            folder = "cifar-100-python"
            add(f"{folder}/meta", _pickle({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                           b"coarse_label_names": [f"k{i}".encode() for i in range(20)]}))
            for split, n in (("train", n_train_per_batch * 5), ("test", n_test)):
                data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
                fine = [int(v) for v in rng.integers(0, 100, n)]
                coarse = [v // 5 for v in fine]
                if split == "train":
                    truth["train"].append((data, fine))
                else:
                    truth["test"] = (data, fine)
                add(f"{folder}/{split}", _pickle({b"filenames": [b"z.png"] * n, b"batch_label": b"b",
                                                  b"fine_labels": fine, b"coarse_labels": coarse, b"data": data}))
            add(f"{folder}/file.txt~", b"")
    return truth


def _expected_image(row: np.ndarray) -> np.ndarray:
    # CIFAR page: "The first 1024 entries contain the red channel values, the next 1024 the green, and the
    # final 1024 the blue. The image is stored in row-major order." -> build (3, 32, 32) by explicit loops
    img = np.empty((3, 32, 32), np.uint8)
    for c in range(3):
        for r in range(32):
            img[c, r, :] = row[c * 1024 + r * 32: c * 1024 + r * 32 + 32]
    return img


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_from_archive_and_folder(tmp_path, variant):
    archive = tmp_path / sources.FILES[variant][0].filename
    truth = make_cifar_tar(archive, variant)
    for source in (archive, None):
        if source is None:  # the extracted layout (torchvision's root) gives the same arrays
            with tarfile.open(archive) as tf:
                tf.extractall(tmp_path / "x", filter="data")
            source = tmp_path / "x"
        d = formats.read_cifar(source, variant)
        x, y = d["train"]
        exp_rows = np.concatenate([data for data, _ in truth["train"]])
        exp_labels = sum((labels for _, labels in truth["train"]), [])
        assert x.shape == (len(exp_rows), 3, 32, 32) and x.dtype == np.uint8
        for i in (0, len(x) - 1):
            np.testing.assert_array_equal(x[i], _expected_image(exp_rows[i]))
        assert y.tolist() == exp_labels and y.dtype == np.int64
        tx, ty = d["test"]
        np.testing.assert_array_equal(tx[1], _expected_image(truth["test"][0][1]))
        assert ty.tolist() == truth["test"][1]
        n = 10 if variant == "cifar10" else 100
        assert len(d["classes"]) == n and d["classes"][3] == ("c3" if n == 10 else "f3")


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_pickle_cannot_run_code(tmp_path):
    evil = pickle.dumps({b"data": _Boom()}, protocol=2)
    with pytest.raises(CnnlabError, match="not allowed"):
        formats.load_cifar_pickle(evil, "evil")
    obj_array = pickle.dumps({b"data": np.array([object()], dtype=object)}, protocol=2)
    with pytest.raises(CnnlabError, match="object arrays"):
        formats.load_cifar_pickle(obj_array, "objects")


def test_cifar_missing_member(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        payload = _pickle({b"label_names": [b"a"] * 10})
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(CnnlabError, match="data_batch_1"):
        formats.read_cifar(archive, "cifar10")


# ------------------------------------------------------------------------------------------------ SVHN
def test_svhn_mat_ten_means_zero(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    n = 12
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # the official (H, W, C, N) layout
    digits = np.arange(n) % 10
    y = np.where(digits == 0, 10, digits).reshape(n, 1).astype(np.uint8)  # SVHN: label 10 is the digit 0
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    images, labels = formats.read_svhn_mat(tmp_path / "train_32x32.mat")
    assert images.shape == (n, 3, 32, 32) and images.dtype == np.uint8
    assert labels.tolist() == digits.tolist()
    for i in (0, 7):
        for c in range(3):
            np.testing.assert_array_equal(images[i, c], x[:, :, c, i])


def test_svhn_not_a_mat_file(tmp_path):
    (tmp_path / "test_32x32.mat").write_bytes(b"definitely not matlab")
    with pytest.raises(CnnlabError, match="not a readable SVHN"):
        formats.read_svhn_mat(tmp_path / "test_32x32.mat")


# ------------------------------------------------------------------------------ real Fashion-MNIST
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                                   reason="dataset-fashion-mnist not installed")


@needs_fashion
def test_debian_payload_matches_official_md5():
    # The Debian .gz files are re-compressed; their decompressed bytes must be the official ones
    # (MD5s from torchvision's historical raw-file table).
    for raw, md5 in sources.PAYLOAD_MD5["fashion-mnist"].items():
        assert hashlib.md5(gzip.decompress((FASHION / f"{raw}.gz").read_bytes())).hexdigest() == md5


@needs_fashion
def test_real_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    from cnnlab.data import load_dataset

    ds = load_dataset("fashion-mnist")
    assert ds.source == str(FASHION)
    assert len(ds.train) == 60000 and len(ds.test) == 10000
    assert ds.input_size == (1, 28, 28) and ds.train.images.shape == (60000, 1, 28, 28)
    assert ds.train.labels.min() == 0 and ds.train.labels.max() == 9
    assert np.bincount(ds.train.labels.numpy()).tolist() == [6000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    # the widely published normalisation constants of Fashion-MNIST's training set
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-4)
    assert ds.std[0] == pytest.approx(0.3530, abs=1e-4)
