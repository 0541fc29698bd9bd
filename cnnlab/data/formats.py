"""Parsers for the official file formats: IDX (MNIST family), CIFAR python batches, SVHN .mat.

Each returns numpy arrays `images` uint8 (N, C, H, W) and `labels` int64 (N,), or raises CnnlabError
naming the file and what is wrong with it.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError

# ---------------------------------------------------------------------------------------------------- IDX
# http://yann.lecun.com/exdb/mnist/ : magic = 0x00 0x00 <type> <ndim>, then ndim big-endian uint32 sizes,
# then the data, big-endian, row-major.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _gunzip(data: bytes, path: Path) -> bytes:
    """Decompress every gzip member; zlib checks each member's CRC-32 and length, so damage is caught."""
    out = []
    while data:
        d = zlib.decompressobj(wbits=31)
        try:
            out.append(d.decompress(data))
        except zlib.error as e:
            raise CnnlabError(f"{path} is a damaged gzip file ({e}); delete it and download it again") from e
        if not d.eof:
            raise CnnlabError(f"{path} is a truncated gzip file; delete it and download it again")
        data = d.unused_data
    return b"".join(out)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array of its declared type and shape."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, path)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise CnnlabError(f"{path} is not an IDX file (magic {data[:4].hex() or 'empty'}, expected 0000080N)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CnnlabError(f"{path}: IDX header is truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise CnnlabError(f"{path}: IDX shape {shape} needs {expected} data bytes, the file has {len(data) - header}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def read_idx_pair(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """IDX images (N, H, W) uint8 + labels (N,) -> images uint8 (N, 1, H, W), labels int64 (N,)."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise CnnlabError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise CnnlabError(f"{labels_path}: expected {len(images)} labels, got shape {labels.shape}")
    return images[:, None], labels.astype(np.int64)


# -------------------------------------------------------------------------------------------------- CIFAR
# The CIFAR "python version" batches are pickles written by Python 2. Unpickling runs whatever callables
# the file names, so a tampered archive could execute code. `_SafeUnpickler` resolves only the three
# globals that a numpy array needs (the array constructor, ndarray, dtype) plus `_codecs.encode` (how
# Python 3's protocol 2 spells bytes); dicts, lists, bytes, str and ints need no globals at all. Object
# arrays are refused as well, since they would unpickle arbitrary nested objects.


def _safe_dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return dt


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin1")


_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array-unpickling function, whatever its module
_ALLOWED: dict[tuple[str, str], Callable] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch") from None


def load_cifar_pickle(data: bytes, where: str = "CIFAR batch") -> dict:
    """Unpickle one CIFAR batch without executing code; keys are returned as str."""
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CnnlabError(f"{where} is not a valid CIFAR python batch ({e})") from e
    if not isinstance(obj, dict):
        raise CnnlabError(f"{where} is not a valid CIFAR python batch (a {type(obj).__name__}, expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


# variant -> (folder inside the archive, train batches, test batch, meta file, label key, names key)
CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}


def _cifar_arrays(batches: list[dict], label_key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for b in batches:
        data, lab = b.get("data"), b.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise CnnlabError(f"{where}: 'data' must be a uint8 array (N, 3072)")
        if lab is None or len(lab) != len(data):
            raise CnnlabError(f"{where}: '{label_key}' must hold {len(data)} labels")
        images.append(data.reshape(-1, 3, 32, 32))  # each row: 1024 red, 1024 green, 1024 blue, row-major
        labels.append(np.asarray(lab, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def read_cifar(source: str | Path, variant: str) -> dict:
    """Read CIFAR-10/100 from the official `cifar-*-python.tar.gz` or from its extracted folder.

    Returns {"train": (images, labels), "test": (images, labels), "classes": [names]}, images uint8
    (N, 3, 32, 32); CIFAR-100 labels are the 100 fine labels.
    """
    folder, train_names, test_name, meta_name, label_key, names_key = CIFAR_LAYOUT[variant]
    source = Path(source)
    if source.is_dir():
        base = source / folder if (source / folder).is_dir() else source

        def read(name: str) -> bytes:
            p = base / name
            if not p.is_file():
                raise CnnlabError(f"{p} is missing: not a complete {variant} folder")
            return p.read_bytes()
    else:
        try:
            tf = tarfile.open(source)
        except (tarfile.TarError, OSError) as e:
            raise CnnlabError(f"{source} is not a readable tar.gz archive ({e})") from e
        # read members by exact name, straight from the archive: nothing is written to disk
        names = {m.name: m for m in tf.getmembers() if m.isfile()}

        def read(name: str) -> bytes:
            m = names.get(f"{folder}/{name}")
            if m is None:
                raise CnnlabError(f"{source} has no member {folder}/{name}: not the official {variant} archive")
            return tf.extractfile(m).read()

    meta = load_cifar_pickle(read(meta_name), f"{source}:{meta_name}")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(names_key, [])]
    train = _cifar_arrays([load_cifar_pickle(read(n), f"{source}:{n}") for n in train_names], label_key, str(source))
    test = _cifar_arrays([load_cifar_pickle(read(test_name), f"{source}:{test_name}")], label_key, str(source))
    if not source.is_dir():
        tf.close()
    return {"train": train, "test": test, "classes": classes}


# --------------------------------------------------------------------------------------------------- SVHN


def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN cropped-digits file (`train_32x32.mat`, `test_32x32.mat`).

    The file holds X uint8 (32, 32, 3, N) and y (N, 1) with labels 1..10, where 10 means the digit 0;
    returns images uint8 (N, 3, 32, 32) and labels int64 (N,) in 0..9 (label = digit).
    """
    from scipy.io import loadmat  # noqa: PLC0415 - scipy is slow to import and only SVHN needs it

    path = Path(path)
    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises several unrelated types for a bad file
        raise CnnlabError(f"{path} is not a readable SVHN .mat file ({e})") from e
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[2] != 3 or y.size != x.shape[3]:
        raise CnnlabError(f"{path}: expected X (32, 32, 3, N) and y (N, 1)")
    labels = y.reshape(-1).astype(np.int64)
    if labels.min() < 1 or labels.max() > 10:
        raise CnnlabError(f"{path}: SVHN labels must lie in 1..10, found {labels.min()}..{labels.max()}")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8, copy=False)  # (N, C, H, W)
    return images, labels % 10
