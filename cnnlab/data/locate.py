"""Where datasets are looked for, in order, and where downloads go.

Search order: `data_dir` (the `--data-dir` option), `$CNNLAB_DATA`, the user cache directory
(`$XDG_CACHE_HOME/cnnlab`, default `~/.cache/cnnlab`), then `/usr/share/datasets` (where Debian's
`dataset-fashion-mnist` package installs the official files). Under each root a dataset may sit in a
folder of its own name (`fashion-mnist/`), in torchvision's layout (`FashionMNIST/raw/`,
`cifar-10-batches-py/`), or directly in the root. Downloads go to the first writable choice among
`data_dir`, `$CNNLAB_DATA` and the cache directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.core.paths import cache_dir

SYSTEM_DIR = Path("/usr/share/datasets")

# dataset -> sub-folders of a root to look in ("" = the root itself)
SUBDIRS = {
    "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist", ""),
    "mnist": ("mnist", "MNIST/raw", ""),
    "kmnist": ("kmnist", "KMNIST/raw", ""),
    "cifar10": ("cifar10", ""),
    "cifar100": ("cifar100", ""),
    "svhn": ("svhn", ""),
}


def search_roots(data_dir: str | Path | None = None) -> list[Path]:
    """The roots searched, in order, without duplicates."""
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get("CNNLAB_DATA"):
        roots.append(Path(os.environ["CNNLAB_DATA"]).expanduser())
    roots += [cache_dir(), SYSTEM_DIR]
    unique = []
    for r in roots:
        if r not in unique:
            unique.append(r)
    return unique


def download_root(data_dir: str | Path | None = None) -> Path:
    """Where `--download` puts files: `data_dir`, else `$CNNLAB_DATA`, else the cache directory."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("CNNLAB_DATA"):
        return Path(os.environ["CNNLAB_DATA"]).expanduser()
    return cache_dir()


def _first_existing(folder: Path, name: str) -> Path | None:
    """`name` or, for a `.gz` name, the same file already decompressed (torchvision keeps both)."""
    for candidate in (name, name[:-3] if name.endswith(".gz") else None):
        if candidate and (folder / candidate).is_file():
            return folder / candidate
    return None


def find_files(name: str, filenames: list[str], data_dir: str | Path | None = None) -> dict[str, Path] | None:
    """The first folder (in search order) holding every file in `filenames`: {filename: path}, or None."""
    for folder in candidate_folders(name, data_dir):
        found = {f: _first_existing(folder, f) for f in filenames}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def candidate_folders(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Every folder searched for dataset `name`, in order."""
    return [root / sub if sub else root for root in search_roots(data_dir) for sub in SUBDIRS[name]]


def looked_in(data_dir: str | Path | None = None) -> str:
    """A short description of the roots searched, for error messages."""
    return ", ".join(str(r) for r in search_roots(data_dir))
