"""`imagefolder:PATH` — one sub-folder per class, any format Pillow reads, checked before training starts.

Layout: if PATH has `train/` and `test/` (or `val/`) sub-folders they are the splits (with both `test/` and
`val/`, `val/` is the validation split); otherwise PATH holds the class folders and a fixed 20% of each class
(seed 0, whatever `seed` is, so the test set never moves) becomes the test split. Files are found
recursively inside each class folder; hidden files are ignored.

What the walk reads (a folder may come from anyone, so nothing in it decides what else is opened):
- regular files only: FIFOs, sockets and devices are skipped from `stat`, never opened (a FIFO named
  `x.png` would block the load); files are opened with O_NONBLOCK and checked again on the open descriptor;
- only under PATH: a symbolic link is followed only when its target resolves inside PATH (a link to `/etc`
  or to another dataset is skipped, not walked);
- each file and each folder once, by (st_dev, st_ino): a link cycle is walked once, and a file reached twice
  (hard links, a link to a file or folder seen before) is read once, in the split met first (train before
  test and val), so no image is both trained on and tested on.
Everything left out is reported, one line per entry and a count per reason, and listed in `Dataset.skipped`.

Conversion rules, applied to every image so one folder gives one consistent tensor:
- channels: 1 if every image is grayscale (modes 1, L, LA, I, I;16, F), else 3 (RGB); palette (P) images
  count as colour; grayscale images in a colour dataset are replicated to 3 channels.
- alpha (RGBA, LA, PA, P with transparency) is composited on white: out = c * a/255 + 255 * (1 - a/255).
- 16-bit (I;16, I) is scaled to 8 bits as round(v / 257) (65535 -> 255); 32-bit float (F) is taken as 0..255.
- other modes (CMYK, YCbCr, ...) go through Pillow's `convert("RGB")`; multi-frame files use the first frame.
- `image_size`: shorter side resized to it (bilinear, antialiased), then centre-cropped to a square;
  without it every image must already have the same size.

Every file is decoded once up front: unreadable ones (zero bytes, not an image, truncated, a decompression
bomb — Pillow's MAX_IMAGE_PIXELS limit stays on, and its warning counts as an error too) are reported one
line each on stderr and skipped, or with `strict=True` stop the load with a CnnlabError naming the file
(as do entries that are not regular files, links leaving PATH and entries that cannot be stat'ed; files
and folders met a second time are only reported).
So batches never fail mid-epoch. Folders whose decoded pixels fit in `memory_limit` bytes are then held in
memory like the built-in datasets; larger ones stream from disk through DataLoader worker processes.
"""

from __future__ import annotations

import os
import stat
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cnnlab.data.dataset import Dataset, check_image_size, check_val_fraction
from cnnlab.data.memory import (
    MemorySplit,
    Split,
    _check_batching,
    batch_slices,
    channel_stats,
    epoch_order,
    stratified_holdout,
)
from cnnlab.errors import CnnlabError

MEMORY_LIMIT = 2 << 30  # bytes of decoded uint8 pixels (all splits) up to which a folder is held in memory
TEST_FRACTION = 0.2  # of each class, for folders without train/ and test/ sub-folders
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
SIXTEEN_BIT = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
PARALLEL_FROM = 2000  # files; below this the up-front decode runs in the main process (no worker start-up)


# ------------------------------------------------------------------------------------------ conversion


def _composite_on_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0 if color.ndim == 3 else alpha.astype(np.float64) / 255.0
    return np.floor(color.astype(np.float64) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def to_uint8_array(im: Image.Image, gray: bool) -> np.ndarray:
    """A loaded PIL image -> uint8 array (H, W) if `gray` else (H, W, 3), by the rules in the module doc."""
    mode = im.mode
    if mode in SIXTEEN_BIT:
        v = np.clip(np.asarray(im).astype(np.float64), 0, 65535)
        arr = np.floor(v / 257.0 + 0.5).astype(np.uint8)
    elif mode == "F":
        arr = np.floor(np.clip(np.asarray(im, dtype=np.float64), 0, 255) + 0.5).astype(np.uint8)
    elif mode == "1":
        arr = np.asarray(im.convert("L"))
    elif mode == "L":
        arr = np.asarray(im)
    elif mode in ("LA", "La"):
        la = np.asarray(im.convert("LA") if mode == "La" else im)
        arr = _composite_on_white(la[..., 0], la[..., 1])
    else:
        if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
            rgba = np.asarray(im.convert("RGBA"))
            arr = _composite_on_white(rgba[..., :3], rgba[..., 3])
        else:
            arr = np.asarray(im if mode == "RGB" else im.convert("RGB"))
        if gray:  # cannot happen with the channel rule above, but keep the function total
            arr = np.asarray(Image.fromarray(arr).convert("L"))
    if not gray and arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr


def _resize(arr: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return arr
    h, w = arr.shape[:2]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        arr = np.asarray(Image.fromarray(arr).resize((nw, nh), Image.Resampling.BILINEAR))
        top, left = (nh - size) // 2, (nw - size) // 2
        arr = arr[top:top + size, left:left + size]
    return arr


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | Path) -> BinaryIO:
    """Open `path` for reading only if it is a regular file.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer (it changes nothing for
    regular files), and the check runs on the open descriptor, so a file swapped for a FIFO or a device
    after the walk is refused, not read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"{_kind(mode)}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def decode(path: Path, gray: bool, size: int | None) -> np.ndarray:
    """Decode one file to uint8 (C, H, W); raises whatever Pillow raises for a bad file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with open_regular(path) as f, Image.open(f) as im:
            im.seek(0)
            im.load()
            arr = _resize(to_uint8_array(im, gray), size)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ------------------------------------------------------------------------------------------------ scan


# reasons an entry is left out by the walk; the first three stop a strict load
NOT_REGULAR = "not a regular file"
OUTSIDE = "link leaving the folder"
NO_STAT = "cannot be read"
SEEN_FILE = "file seen before"
SEEN_FOLDER = "folder seen before"
BAD_IMAGE = "unreadable image"


class _Walk:
    """The files under one root, by the rules in the module docstring.

    Paths are kept as found (root / class / name), for messages; links are resolved only to check where
    they lead. `skipped` holds (path, reason, detail) for every entry left out.
    """

    def __init__(self, root: Path):
        self.root = root
        self.real_root = root.resolve()
        self.files: dict[tuple[int, int], Path] = {}  # (st_dev, st_ino) -> first path it was found at
        self.folders: set[tuple[int, int]] = set()  # walked, or reserved as a split or class folder
        self.started: set[tuple[int, int]] = set()  # folders `files_in` was called for
        self.skipped: list[tuple[Path, str, str]] = []
        self._listed: dict[Path, list[tuple[Path, os.stat_result]]] = {}

    def _entries(self, folder: Path, folders_only: bool = False) -> list[tuple[Path, os.stat_result]]:
        """(path, stat) of the visible entries of `folder` that may be read, sorted by name; once per folder.

        `folders_only` (the root and split folders, where only class folders count): files, FIFOs and
        broken links there are ignored, not reported; a link to a folder outside the root is reported."""
        if folder in self._listed:
            return self._listed[folder]
        out = []
        try:
            names = sorted(e.name for e in os.scandir(folder) if not e.name.startswith("."))
        except OSError as e:
            self.skipped.append((folder, NO_STAT, _reason(e)))
            names = []
        for name in names:
            path = folder / name
            if path.is_symlink():
                real = Path(os.path.realpath(path))
                if not real.is_relative_to(self.real_root):
                    if not folders_only or real.is_dir():
                        self.skipped.append((path, OUTSIDE, f"a link to {real}, outside {self.real_root}"))
                    continue
            try:
                st = os.stat(path)  # stat, never open: a FIFO would block
            except OSError as e:  # a dangling link, a link loop, no permission
                if not folders_only:
                    self.skipped.append((path, NO_STAT, _reason(e)))
                continue
            if folders_only and not stat.S_ISDIR(st.st_mode):
                continue
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                self.skipped.append((path, NOT_REGULAR, _kind(st.st_mode)))
                continue
            out.append((path, st))
        self._listed[folder] = out
        return out

    def reserve(self, folders: list[Path]) -> None:
        """Folders walked only as what they are (the root, a split, a class), never from inside another."""
        for d in folders:
            st = os.stat(d)
            self.folders.add((st.st_dev, st.st_ino))

    def subfolders(self, folder: Path) -> list[Path]:
        """The folders in a root or split folder (the class or split folders)."""
        return [p for p, _ in self._entries(folder, folders_only=True)]

    def files_in(self, folder: Path) -> tuple[list[Path], int]:
        """Regular files met for the first time under `folder` (files of a folder before its sub-folders,
        each sorted by name), and how many entries were found there in all (kept or skipped)."""
        out: list[Path] = []
        before = len(self.skipped)
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in self.started:  # e.g. test/ a link to train/
            self.skipped.append((folder, SEEN_FOLDER, "the same folder as another class folder"))
            return out, 1
        self.started.add((st.st_dev, st.st_ino))
        self.folders.discard((st.st_dev, st.st_ino))
        stack = [(folder, st)]
        while stack:
            d, st = stack.pop()
            key = (st.st_dev, st.st_ino)
            if key in self.folders or (d != folder and key in self.started):
                self.skipped.append((d, SEEN_FOLDER, "a link cycle or a second way into a folder"))
                continue
            self.folders.add(key)
            entries = self._entries(d)
            for p, pst in entries:
                if stat.S_ISREG(pst.st_mode):
                    fkey = (pst.st_dev, pst.st_ino)
                    if fkey in self.files:
                        self.skipped.append((p, SEEN_FILE, f"the same file as {self.files[fkey]}"))
                    else:
                        self.files[fkey] = p
                        out.append(p)
            stack += reversed([(p, pst) for p, pst in entries if stat.S_ISDIR(pst.st_mode)])
        return out, len(out) + len(self.skipped) - before


def _layout(root: Path, walk: _Walk) -> dict[str, Path]:
    """split name -> folder of class folders."""
    if not root.is_dir():
        raise CnnlabError(f"imagefolder: {root} is not a folder (expected one sub-folder per class)")
    subs = {p.name for p in walk.subfolders(root)}
    if "train" in subs and ({"test", "val"} & subs):
        layout = {"train": root / "train", "test": root / ("test" if "test" in subs else "val")}
        if "test" in subs and "val" in subs:
            layout["val"] = root / "val"
        return layout
    return {"all": root}


def has_val_folder(path: str | Path) -> bool:
    """Whether `path` holds train/, test/ and val/ split folders (the dataset's own validation split).
    False for a folder that is not a readable dataset: loading it reports why."""
    root = Path(path).expanduser()
    try:
        return "val" in _layout(root, _Walk(root))
    except (CnnlabError, OSError):
        return False


def _class_folders(folder: Path, classes: list[str] | None, walk: _Walk) -> tuple[list[str], list[Path]]:
    """(class names, class folders) of one split folder; `classes` from train/ when given."""
    dirs = walk.subfolders(folder)
    names = [d.name for d in dirs]
    if classes is None:
        if not dirs:
            raise CnnlabError(f"imagefolder: {folder} has no class sub-folders (expected {folder}/<class>/<image>)")
        if len(dirs) == 1:
            raise CnnlabError(f"imagefolder: {folder} has only one class folder ({names[0]!r}); a classifier needs at least 2")
        classes = names
    else:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise CnnlabError(f"imagefolder: {folder} has class folder {unknown[0]!r} that train/ does not have")
    return classes, dirs


def _collect(dirs: list[Path], classes: list[str], walk: _Walk) -> tuple[list[Path], list[int]]:
    """The files of each class folder and their labels."""
    paths, labels = [], []
    for d in dirs:
        files, found = walk.files_in(d)
        if not found:
            raise CnnlabError(f"imagefolder: class folder {d} is empty (remove it or add images)")
        paths += files
        labels += [classes.index(d.name)] * len(files)
    return paths, labels


def _probe(path: Path) -> tuple[str, tuple[int, int]]:
    """(mode, (width, height)) from the header; raises for unreadable files and decompression bombs."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with open_regular(path) as f, Image.open(f) as im:
            return im.mode, im.size


class _DecodeAll(torch.utils.data.Dataset):
    """Decodes file i -> (i, array or None, per-channel [sum, sum of squares] in [0,1] units, error)."""

    def __init__(self, paths: list[Path], gray: bool, size: int | None, keep: bool):
        self.paths, self.gray, self.size, self.keep = paths, gray, size, keep

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            arr = decode(self.paths[i], self.gray, self.size)
        except Exception as e:  # any failure means "skip this file"; the reason is reported
            return i, None, None, _reason(e)
        x = arr.reshape(arr.shape[0], -1).astype(np.float64) / 255.0
        sums = np.stack([x.sum(1), (x * x).sum(1)], axis=1)  # (C, 2)
        return i, (arr if self.keep else None), sums, None


def _identity(x):
    return x


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))


# ---------------------------------------------------------------------------------------------- splits


class _FolderImages(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], gray: bool, size: int | None):
        self.paths, self.gray, self.size = paths, gray, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        try:
            return torch.from_numpy(decode(self.paths[i], self.gray, self.size))
        except Exception as e:  # verified at load time, so the file changed since
            raise CnnlabError(f"imagefolder: {self.paths[i]} can no longer be read ({_reason(e)})") from e


class FolderSplit(Split):
    """A split streamed from disk: files decoded by DataLoader workers, in `epoch_order`."""

    def __init__(self, paths: list[Path], labels: Tensor, gray: bool, size: int | None, num_workers: int):
        self.paths = list(paths)
        self.labels = labels.to(torch.int64)
        self.gray, self.size, self.num_workers = gray, size, num_workers

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"FolderSplit({len(self)} files, streamed)"

    def subset(self, indices: Tensor) -> FolderSplit:
        idx = indices.tolist()
        return FolderSplit([self.paths[i] for i in idx], self.labels[indices], self.gray, self.size, self.num_workers)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        order: Tensor | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        _check_batching(batch_size, rank, world_size)
        device = torch.device(device)
        if order is None:
            order = epoch_order(len(self), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world_size=world_size)
        index_batches = [order[s].tolist() for s in batch_slices(len(order), batch_size, drop_last)]
        loader = torch.utils.data.DataLoader(
            _FolderImages(self.paths, self.gray, self.size),
            batch_sampler=index_batches,
            num_workers=self.num_workers,
            collate_fn=torch.stack,
            pin_memory=device.type == "cuda",
        )
        for idx, images in zip(index_batches, loader, strict=True):
            labels = self.labels[idx]
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


# ---------------------------------------------------------------------------------------------- loader


def _stats_from_sums(sums: np.ndarray, pixels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """sums (C, 2) of x and x^2 over `pixels` values per channel -> (mean, std)."""
    mean = sums[:, 0] / pixels
    std = np.sqrt(np.maximum(sums[:, 1] / pixels - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def load_imagefolder(
    path: str | Path,
    *,
    image_size: int | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    strict: bool = False,
    memory_limit: int = MEMORY_LIMIT,
    num_workers: int | None = None,
    report: Callable[[str], None] | None = None,
) -> Dataset:
    """Load `path` as an image-classification dataset (rules in the module docstring).

    `memory_limit`: bytes of decoded pixels up to which the images are held in memory (else streamed);
    `num_workers`: DataLoader workers for decoding (default min(4, CPUs)); `report`: where warning lines
    go (default stderr).
    """
    check_val_fraction(val_fraction)
    check_image_size(image_size)
    report = report or (lambda line: sys.stderr.write(line + "\n"))
    workers = _default_workers() if num_workers is None else int(num_workers)
    root = Path(path).expanduser()
    walk = _Walk(root)
    layout = _layout(root, walk)
    if "val" in layout and val_fraction > 0:
        raise CnnlabError(f"imagefolder: {root} has a val/ folder, so val_fraction must be 0, got {val_fraction}")

    # 1. find files per split (classes come from train/, or from the root)
    first = "all" if "all" in layout else "train"
    classes, dirs = _class_folders(layout[first], None, walk)
    split_dirs = {first: dirs}
    for split in ("test", "val"):
        if split in layout:
            split_dirs[split] = _class_folders(layout[split], classes, walk)[1]
    # a link inside one class folder to the root, a split or another class is not walked into
    walk.reserve([root, *layout.values(), *(d for ds in split_dirs.values() for d in ds)])
    groups = {split: _collect(ds, classes, walk) for split, ds in split_dirs.items()}

    # 2. headers: mode and size of every file; bombs and non-images fail here already
    skipped: list[tuple[Path, str]] = []
    reasons: Counter[str] = Counter()

    def fail_or_skip(p: Path, why: str, reason: str = BAD_IMAGE) -> None:
        if strict and reason not in (SEEN_FILE, SEEN_FOLDER):
            raise CnnlabError(f"imagefolder: cannot read {p} ({reason}: {why}); remove it or load without strict=True")
        skipped.append((p, f"{reason}: {why}" if reason != BAD_IMAGE else why))
        reasons[reason] += 1

    for p, reason, why in walk.skipped:
        fail_or_skip(p, why, reason)
    all_paths = [p for ps, _ in groups.values() for p in ps]
    modes, sizes, bad = {}, {}, {}
    for p in all_paths:
        try:
            modes[p], sizes[p] = _probe(p)
        except Exception as e:
            bad[p] = _reason(e)

    for p, why in bad.items():
        fail_or_skip(p, why)
    good = [p for p in all_paths if p not in bad]
    found = len(all_paths) + len(walk.skipped)  # entries the walk met, read or not
    if not good:
        raise CnnlabError(f"imagefolder: none of the {found} files under {root} is a readable image")
    gray = all(modes[p] in GRAY_MODES for p in good)
    channels = 1 if gray else 3
    # decoded bytes, from the headers (exact after resizing, an upper bound when files are skipped later)
    pixels = len(good) * image_size**2 if image_size else sum(w * h for w, h in (sizes[p] for p in good))
    in_memory = pixels * channels <= memory_limit

    # 3. decode everything once: verifies each file, gathers the pixels (in memory) or the statistics
    decoder = _DecodeAll(good, gray, image_size, keep=in_memory)
    if workers > 0 and len(good) >= PARALLEL_FROM:
        results = torch.utils.data.DataLoader(decoder, batch_size=None, num_workers=workers, collate_fn=_identity)
    else:
        results = (decoder[i] for i in range(len(good)))
    arrays, sums = {}, {}
    for i, arr, s, err in results:
        if err is not None:
            fail_or_skip(good[i], err)
        else:
            arrays[good[i]], sums[good[i]] = arr, s
    for p, why in skipped:
        report(f"cnnlab: warning: skipped {p}: {why}")
    if skipped:
        counts = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        report(f"cnnlab: warning: skipped {len(skipped)} of {found} files under {root} ({counts}; listed above)")
    if not sums:
        raise CnnlabError(f"imagefolder: none of the {found} files under {root} is a readable image")
    if image_size is None:  # only now: a file that fails to decode must not decide the size
        distinct = sorted({sizes[p] for p in sums})
        if len(distinct) > 1:
            (w0, h0), (w1, h1) = distinct[0], distinct[-1]
            raise CnnlabError(f"imagefolder: images under {root} differ in size ({w0}x{h0} ... {w1}x{h1}); "
                              f"pass image_size (e.g. image_size={min(h0, w0, h1, w1)})")
        w, h = distinct[0]
    else:
        w = h = image_size

    # 4. splits
    splits = {}
    for name, (ps, labs) in groups.items():
        keep = [(p, lab) for p, lab in zip(ps, labs, strict=True) if p in sums]
        if not keep:
            raise CnnlabError(f"imagefolder: no readable image left in the {name} split under {root}")
        kp = [p for p, _ in keep]
        lt = torch.tensor([lab for _, lab in keep], dtype=torch.int64)
        if in_memory:
            splits[name] = MemorySplit(torch.from_numpy(np.stack([arrays[p] for p in kp])), lt)
        else:
            splits[name] = FolderSplit(kp, lt, gray, image_size, workers)
        splits[name]._sums = np.stack([sums[p] for p in kp])  # (N, C, 2), for the statistics below

    if "all" in splits:
        rest, test_idx = stratified_holdout(splits["all"].labels, TEST_FRACTION, 0)
        splits["train"], splits["test"] = _subset(splits["all"], rest), _subset(splits["all"], test_idx)
    if val_fraction > 0:
        keep_idx, val_idx = stratified_holdout(splits["train"].labels, val_fraction, seed)
        splits["train"], splits["val"] = _subset(splits["train"], keep_idx), _subset(splits["train"], val_idx)
    train = splits["train"]
    if in_memory:
        mean, std = channel_stats(train.images)
    else:
        mean, std = _stats_from_sums(train._sums.sum(0), len(train) * h * w)
    for s in splits.values():
        s.__dict__.pop("_sums", None)
    return Dataset(
        name=f"imagefolder:{root}",
        classes=classes,
        input_size=(channels, h, w),
        mean=mean,
        std=std,
        source=str(root),
        train=train,
        test=splits["test"],
        val=splits.get("val"),
        skipped=skipped,
    )


def _subset(split, indices: Tensor):
    sub = split.subset(indices)
    sub._sums = split._sums[indices.numpy()]
    return sub
