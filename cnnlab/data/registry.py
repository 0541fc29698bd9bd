"""The dataset registry: what each dataset is, where it was found, and `load_dataset` / `fetch_dataset`.

`digits` is scikit-learn's bundled 8x8 handwritten digits (always available offline). Its split is fixed:
stratified, 1,437 train / 360 test, `train_test_split(..., test_size=360, stratify=y, random_state=0)`,
whatever `seed` says (seed only drives the validation split), and the 0..16 pixel values become uint8
as (v * 255 + 8) // 16, i.e. v * 255 / 16 rounded half up (16 -> 255, 8 -> 128).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cnnlab.data import formats, locate, sources
from cnnlab.data.dataset import check_image_size, check_val_fraction, in_memory_dataset
from cnnlab.data.download import download
from cnnlab.data.extract import safe_extract
from cnnlab.data.imagefolder import load_imagefolder
from cnnlab.errors import CnnlabError, did_you_mean

IDX_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
CIFAR_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_META = {"cifar10": "batches.meta", "cifar100": "meta"}


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry, as `cnnlab data list` shows it."""

    name: str
    num_classes: int
    input_size: tuple[int, int, int]  # (C, H, W) as published
    train_count: int
    test_count: int
    description: str
    homepage: str
    location: str = ""  # where it was found, "embedded (scikit-learn)", or "not found"
    found: bool = False
    how_to_get: str = ""  # what to run when it is not found
    download_urls: tuple[str, ...] = ()  # the official files (first mirror of each)

    def to_dict(self) -> dict:
        return asdict(self)


_INFO = {
    "digits": DatasetInfo("digits", 10, (1, 8, 8), 1437, 360, "scikit-learn's 8x8 handwritten digits (UCI)",
                          "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset"),
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), 60000, 10000, "handwritten digits (LeCun et al. 1998)",
                         "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, (1, 28, 28), 60000, 10000,
                                 "Zalando's article images (Xiao et al. 2017)",
                                 "https://github.com/zalandoresearch/fashion-mnist"),
    "kmnist": DatasetInfo("kmnist", 10, (1, 28, 28), 60000, 10000, "Kuzushiji-MNIST, cursive Japanese (Clanuwat et al. 2018)",
                          "https://github.com/rois-codh/kmnist"),
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), 50000, 10000, "tiny colour images (Krizhevsky 2009)",
                           "https://www.cs.toronto.edu/~kriz/cifar.html"),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32), 50000, 10000, "tiny colour images, 100 fine classes",
                            "https://www.cs.toronto.edu/~kriz/cifar.html"),
    "svhn": DatasetInfo("svhn", 10, (3, 32, 32), 73257, 26032, "Street View house-number digits, cropped (Netzer et al. 2011)",
                        "http://ufldl.stanford.edu/housenumbers/"),
}

CLASSES = {
    "digits": [str(i) for i in range(10)],
    "mnist": [str(i) for i in range(10)],
    "svhn": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}


def dataset_names() -> list[str]:
    return list(_INFO)


# --------------------------------------------------------------------------------------------- finding


def _find(name: str, data_dir) -> tuple[str, dict[str, Path]] | None:
    """(folder where found, {role: path}) for a file-based dataset, or None."""
    if name in ("mnist", "fashion-mnist", "kmnist"):
        found = locate.find_files(name, IDX_FILES, data_dir)
        return (str(found[IDX_FILES[0]].parent), found) if found else None
    if name in CIFAR_FOLDER:
        meta = f"{CIFAR_FOLDER[name]}/{CIFAR_META[name]}"
        archive = sources.FILES[name][0].filename
        for folder in locate.candidate_folders(name, data_dir):
            if (folder / meta).is_file():  # extracted (our download, or torchvision's root)
                return str(folder / CIFAR_FOLDER[name]), {"source": folder / CIFAR_FOLDER[name]}
            if (folder / archive).is_file():  # the archive itself, read without extracting
                return str(folder / archive), {"source": folder / archive}
        return None
    if name == "svhn":
        found = locate.find_files(name, ["train_32x32.mat", "test_32x32.mat"], data_dir)
        return (str(found["train_32x32.mat"].parent), found) if found else None
    raise KeyError(name)


def find_dataset(name: str, data_dir: str | Path | None = None) -> str | None:
    """Where dataset `name` was found (a folder or archive path), "embedded (scikit-learn)", or None."""
    _check_name(name)
    if name == "digits":
        return "embedded (scikit-learn)"
    hit = _find(name, data_dir)
    return hit[0] if hit else None


def _how_to_get(name: str) -> str:
    mb = sources.download_size(name) / 1e6
    host = sources.FILES[name][0].urls[0].rsplit("/", 1)[0] + "/"
    hint = f"`cnnlab data get {name} --download` ({mb:,.0f} MB from {host})"
    if name == "fashion-mnist":
        hint += " or `apt-get install dataset-fashion-mnist`"
    return hint


def list_datasets(data_dir: str | Path | None = None) -> list[DatasetInfo]:
    """Every registered dataset, with where it was found (searching as `load_dataset` does)."""
    out = []
    for name, info in _INFO.items():
        if name == "digits":
            out.append(_with(info, location="embedded (scikit-learn)", found=True))
            continue
        info = _with(info, download_urls=tuple(f.urls[0] for f in sources.FILES[name]))
        hit = _find(name, data_dir)
        if hit:
            out.append(_with(info, location=hit[0], found=True))
        else:
            out.append(_with(info, location="not found", found=False, how_to_get=_how_to_get(name)))
    return out


def _with(info: DatasetInfo, **changes) -> DatasetInfo:
    return DatasetInfo(**{**asdict(info), **changes})


# -------------------------------------------------------------------------------------------- fetching


def fetch_dataset(name: str, data_dir: str | Path | None = None, progress: Callable | None = None) -> Path:
    """Download (and for CIFAR extract) dataset `name` into the download root; returns its folder.

    Files already present and verified are kept; every file is checked by its official checksum.
    """
    _check_name(name)
    if name == "digits":
        raise CnnlabError("digits ships with scikit-learn; there is nothing to download")
    folder = locate.download_root(data_dir) / name
    for f in sources.FILES[name]:
        download(f.urls, folder / f.filename, sha256=f.sha256, md5=f.md5, size=f.size,
                 progress=(lambda got, total, _n=f.filename: progress(_n, got, total)) if progress else None)
    if name in CIFAR_FOLDER and not (folder / CIFAR_FOLDER[name]).exists():
        safe_extract(folder / sources.FILES[name][0].filename, folder)
    return folder


# --------------------------------------------------------------------------------------------- loading


def _check_name(name: str) -> None:
    if name not in _INFO:
        raise CnnlabError(
            f"unknown dataset {name!r}{did_you_mean(name, _INFO)}; choose one of {', '.join(_INFO)} "
            "or imagefolder:PATH"
        )


def _load_digits():
    import numpy as np  # noqa: PLC0415
    from sklearn.datasets import load_digits  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    d = load_digits()
    images = ((d.images.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(images, labels, test_size=360, stratify=labels, random_state=0)
    return (xtr, ytr), (xte, yte), CLASSES["digits"]


def _load_files(name: str, files: dict[str, Path]):
    if name in ("mnist", "fashion-mnist", "kmnist"):
        tr = formats.read_idx_pair(files[IDX_FILES[0]], files[IDX_FILES[1]])
        te = formats.read_idx_pair(files[IDX_FILES[2]], files[IDX_FILES[3]])
        return tr, te, CLASSES[name]
    if name in CIFAR_FOLDER:
        d = formats.read_cifar(files["source"], name)
        return d["train"], d["test"], d["classes"]
    tr = formats.read_svhn_mat(files["train_32x32.mat"])
    te = formats.read_svhn_mat(files["test_32x32.mat"])
    return tr, te, CLASSES["svhn"]


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    strict: bool = False,
):
    """Load a registered dataset or `imagefolder:PATH` as a `Dataset` (splits of uint8 (N, C, H, W) images).

    Registered datasets are searched in `data_dir`, `$CNNLAB_DATA`, the user cache, /usr/share/datasets;
    with `download=True` a missing one is fetched (official URLs, checked by checksum). `image_size` resizes
    (shorter side, then centre crop); `val_fraction` holds out a seeded, stratified part of train as `val`;
    `strict` (imagefolder) stops at the first unreadable file instead of skipping it.
    """
    if not isinstance(name, str):
        raise CnnlabError(f"dataset name must be a string, got {name!r}")
    check_val_fraction(val_fraction)
    check_image_size(image_size)
    if name.startswith("imagefolder:"):
        path = name.split(":", 1)[1]
        if not path:
            raise CnnlabError("imagefolder needs a path: imagefolder:PATH (a folder with one sub-folder per class)")
        return load_imagefolder(path, image_size=image_size, val_fraction=val_fraction, seed=seed, strict=strict)
    _check_name(name)
    if name == "digits":
        train, test, classes = _load_digits()
        source = "embedded (scikit-learn)"
    else:
        hit = _find(name, data_dir)
        if hit is None and download:
            fetch_dataset(name, data_dir)
            hit = _find(name, data_dir)
        if hit is None:
            raise CnnlabError(
                f"dataset {name!r} not found (looked in {locate.looked_in(data_dir)}); "
                f"get it with --download / download=True, or {_how_to_get(name)}"
            )
        source, files = hit
        train, test, classes = _load_files(name, files)
        info = _INFO[name]
        if (len(train[1]), len(test[1])) != (info.train_count, info.test_count):
            raise CnnlabError(
                f"{source}: {name} should have {info.train_count}/{info.test_count} train/test images, "
                f"found {len(train[1])}/{len(test[1])}; the files are incomplete or not the official ones"
            )
    return in_memory_dataset(name, classes, source, train, test, image_size=image_size,
                             val_fraction=val_fraction, seed=seed)
