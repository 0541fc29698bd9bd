"""`audit(data)`: what is in a dataset before a network is trained on it, and what would inflate its test score.

Per split: image count, images per class and the balance (smallest class / largest), image sizes and
modes (as stored in the files for an image folder; the decoded arrays for a registry dataset), the
per-channel mean and std in [0, 1] units, and the files that cannot be read (an image folder is walked
and checked with the loader's own rules, `cnnlab.data.imagefolder`).

Duplicates, within each split and across splits (train/val against test, train against val):
- **exact**: the same decoded pixels (a BLAKE2b digest of the uint8 array and its shape), whatever the file
  format or name;
- **near**: a 64-bit perceptual hash (pHash: the 8x8 lowest frequencies of the DCT of a 32x32 grayscale
  thumbnail, each bit "above the median") within `HAMMING` = 4 bits, **and** a mean absolute difference of
  the two 16x16 grayscale thumbnails of at most `PIXEL_DIFF` = 3 (of 255). Why both: pHash survives resizing
  and JPEG re-encoding (copies of Fashion-MNIST images resized to 45x45 and saved as JPEG at quality 75 land
  0-2 bits from the original, with a thumbnail difference of 1.2-1.6), but at 28x28 it is coarse: 419 groups
  of *different* Fashion-MNIST images (up to 19 in one) share all 64 bits (median thumbnail difference 15). The
  pixel check keeps what a person would call the same picture. A featureless (smooth, nearly blank)
  image has coefficients close to the median whose bits flip under re-encoding: its near-copies can be
  missed. Measured in docs/audit.md.

The near-duplicate search is multi-index hashing: the 64 bits are cut into `HAMMING + 1` bands; two hashes
within `HAMMING` bits agree exactly on at least one band (pigeonhole), so only images sharing a band value
are compared, bucket by bucket with vectorised popcounts; no pair within the threshold is missed.

`cross_split_warning(dataset)` is the cheap check a training run makes: exact duplicates between the
in-memory splits, from a 64-bit key per image (a wrapping dot product of its bytes with fixed random odd
numbers) confirmed byte for byte; milliseconds for Fashion-MNIST.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.core.figures import save_figure, subplots
from cnnlab.core.files import atomic_write_json
from cnnlab.data import imagefolder as folder
from cnnlab.data.memory import MemorySplit, channel_stats, stratified_holdout
from cnnlab.data.registry import load_dataset
from cnnlab.errors import CnnlabError

HAMMING = 4  # bits of 64: the pHash distance up to which two images are compared pixel by pixel
PIXEL_DIFF = 3.0  # mean |difference| of the 16x16 grayscale thumbnails (0-255 scale) to call them near-duplicates
THUMB = 32  # side of the grayscale thumbnail the pHash is taken from
SHOWN_PAIRS = 24  # pairs drawn in pairs.png
LISTED = 50  # pairs listed per kind in the text output (all of them in the JSON)
_DCT = None


# ---- hashes --------------------------------------------------------------------------------------------
def thumbnails(images: torch.Tensor) -> torch.Tensor:
    """uint8 `(N, C, H, W)` (C = 1 or 3) -> float32 `(N, 32, 32)` grayscale (ITU-R 601 luma, as Pillow's "L"),
    resized with antialiased bilinear filtering."""
    x = images.float()
    if x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] != 1:
        x = x.mean(1, keepdim=True)
    return F.interpolate(x, size=(THUMB, THUMB), mode="bilinear", antialias=True, align_corners=False)[:, 0]


def dct_matrix(n: int = THUMB) -> torch.Tensor:
    """The (unnormalised) DCT-II matrix `D[k, i] = cos(pi (2i + 1) k / 2n)`: `D @ x` is the DCT of `x` along 0."""
    k = torch.arange(n, dtype=torch.float64)
    return torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))


def phash(thumbs: torch.Tensor) -> np.ndarray:
    """`(N, 32, 32)` thumbnails -> `(N,)` uint64 pHash: bit set where the 8x8 lowest DCT frequencies
    (row-major, DC first, most significant bit first) exceed their median."""
    d8 = dct_matrix(THUMB)[:8].float()
    low = (d8 @ thumbs.float() @ d8.T).reshape(len(thumbs), 64)  # (N, 64)
    bits = (low > low.median(1, keepdim=True).values).numpy()
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def hamming_pairs(hashes: np.ndarray, distance: int = HAMMING) -> tuple[np.ndarray, np.ndarray]:
    """All pairs `(i, j)`, i < j, of 64-bit hashes at most `distance` bits apart (multi-index hashing)."""
    n = len(hashes)
    bands = distance + 1
    widths = [64 // bands + (1 if b < 64 % bands else 0) for b in range(bands)]
    found_i, found_j, shift = [np.empty(0, np.int64)], [np.empty(0, np.int64)], 0
    for w in widths:
        value = (hashes >> np.uint64(shift)) & np.uint64((1 << w) - 1)
        shift += w
        order = np.argsort(value, kind="stable")
        sorted_v = value[order]
        starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
        size = np.diff(np.r_[starts, n])
        two = starts[size == 2]  # most buckets: vectorised over all of them at once
        a, b = order[two], order[two + 1]
        near = np.bitwise_count(hashes[a] ^ hashes[b]) <= distance
        found_i.append(a[near])
        found_j.append(b[near])
        for start, m in zip(starts[size > 2].tolist(), size[size > 2].tolist(), strict=True):
            idx = order[start:start + m]
            h = hashes[idx]
            ii, jj = np.nonzero(np.triu(np.bitwise_count(h[:, None] ^ h[None, :]) <= distance, 1))
            found_i.append(idx[ii])
            found_j.append(idx[jj])
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    key = np.unique(np.minimum(i, j).astype(np.int64) * n + np.maximum(i, j))
    return key // n, key % n


def digest(pixels: np.ndarray) -> bytes:
    """BLAKE2b digest of a decoded uint8 array and its shape: equal for equal pixels, whatever the file."""
    h = hashlib.blake2b(str(pixels.shape).encode(), digest_size=16)
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.digest()


def _row_keys(images: torch.Tensor) -> np.ndarray:
    """uint8 `(N, ...)` -> `(N,)` uint64 keys: a wrapping dot product of each image's bytes (as 64-bit words)
    with fixed random odd numbers. Equal images have equal keys; unequal ones almost never do."""
    flat = images.reshape(len(images), -1).numpy()
    pad = (-flat.shape[1]) % 8
    if pad:
        flat = np.concatenate([flat, np.zeros((len(flat), pad), np.uint8)], 1)
    words = np.ascontiguousarray(flat).view(np.uint64)
    mult = np.random.default_rng(0x5EED).integers(0, 2**63, words.shape[1], dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        return (words * mult).sum(1, dtype=np.uint64)


def cross_split_duplicates(splits: dict[str, Any]) -> list[tuple[str, int, str, int]]:
    """Exact duplicates between in-memory splits: `(split a, index, split b, index)`; streamed splits are skipped."""
    names = [s for s in splits if isinstance(splits[s], MemorySplit) and len(splits[s])]
    keys = {s: _row_keys(splits[s].images) for s in names}
    out = []
    for x, name_a in enumerate(names):
        for name_b in names[x + 1:]:
            common, ia, ib = np.intersect1d(keys[name_a], keys[name_b], return_indices=True)
            if not len(common):
                continue
            by_key_b = defaultdict(list)
            for j, k in enumerate(keys[name_b].tolist()):
                by_key_b[k].append(j)
            for i, k in enumerate(keys[name_a].tolist()):
                for j in by_key_b.get(k, ()):
                    if torch.equal(splits[name_a].images[i], splits[name_b].images[j]):
                        out.append((name_a, i, name_b, j))
    return out


def cross_split_warning(dataset) -> str:
    """One line when the dataset's in-memory splits share identical images, else ""."""
    splits = {s: getattr(dataset, s, None) for s in ("train", "val", "test")}
    dups = cross_split_duplicates({s: v for s, v in splits.items() if v is not None})
    if not dups:
        return ""
    shown = ", ".join(f"{a}[{i}] = {b}[{j}]" for a, i, b, j in dups[:3]) + (", ..." if len(dups) > 3 else "")
    return (f"{len(dups)} image(s) appear in two splits of {dataset.name} ({shown}): the held-out accuracy "
            f"counts images the model trained on; see `cnnlab data audit {dataset.name}`")


# ---- what the audit reads ------------------------------------------------------------------------------
@dataclass
class _Images:
    """Every readable image of the dataset, in split order: where it is, and what the audit needs of it."""

    split: list[str] = field(default_factory=list)
    index: list[int] = field(default_factory=list)  # position in its split
    label: list[int] = field(default_factory=list)
    path: list[str | None] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    thumbs: list[torch.Tensor] = field(default_factory=list)  # (n, 32, 32) blocks
    pixels: list = field(default_factory=list)  # uint8 (C, H, W) per image (for the pairs figure) or a split tensor
    sizes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    modes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    stats: dict[str, tuple] = field(default_factory=dict)

    def name(self, k: int) -> str:
        return self.path[k] or f"{self.split[k]}[{self.index[k]}]"

    def image(self, k: int) -> torch.Tensor:
        return self.pixels[k]


def _from_dataset(ds) -> _Images:
    out = _Images()
    for split in ("train", "val", "test"):
        part = getattr(ds, split, None)
        if part is None or not len(part):
            continue
        if not isinstance(part, MemorySplit):
            raise CnnlabError(f"{ds.name}: the {split} split is streamed from disk; audit it as imagefolder:PATH")
        images, n = part.images, len(part)
        out.split += [split] * n
        out.index += list(range(n))
        out.label += part.labels.tolist()
        out.path += [None] * n
        flat = images.reshape(n, -1).numpy()
        shape = str(tuple(images.shape[1:])).encode()
        out.digests += [hashlib.blake2b(shape + row.tobytes(), digest_size=16).digest() for row in flat]
        out.thumbs += [thumbnails(images[s:s + 8192]) for s in range(0, n, 8192)]
        out.pixels += list(images)
        c, h, w = images.shape[1:]
        out.sizes[split][f"{w}x{h}"] = n
        out.modes[split]["L" if c == 1 else "RGB" if c == 3 else f"{c} channels"] = n
        out.stats[split] = channel_stats(images)
    return out


def _from_folder(root: Path) -> tuple[_Images, list[str], list[tuple[str, str]]]:
    """An image folder walked and checked as `load_imagefolder` does, decoded at each file's own size."""
    walk = folder._Walk(root)
    layout = folder._layout(root, walk)
    first = "all" if "all" in layout else "train"
    classes, dirs = folder._class_folders(layout[first], None, walk)
    split_dirs = {first: dirs}
    for split in ("test", "val"):
        if split in layout:
            split_dirs[split] = folder._class_folders(layout[split], classes, walk)[1]
    walk.reserve([root, *layout.values(), *(d for ds in split_dirs.values() for d in ds)])
    groups = {split: folder._collect(ds, classes, walk) for split, ds in split_dirs.items()}
    unreadable = [(str(p), f"{reason}: {why}") for p, reason, why in walk.skipped]
    probed = {}
    for paths, _ in groups.values():
        for p in paths:
            try:
                probed[p] = folder._probe(p)
            except Exception as e:  # noqa: BLE001 - any failure is "unreadable", with its reason
                unreadable.append((str(p), folder._reason(e)))
    gray = bool(probed) and all(mode in folder.GRAY_MODES for mode, _ in probed.values())
    decoded = {}
    for p in probed:
        try:
            decoded[p] = folder.decode(p, gray, None)
        except Exception as e:  # noqa: BLE001
            unreadable.append((str(p), folder._reason(e)))
    if not decoded:
        raise CnnlabError(f"imagefolder: none of the files under {root} is a readable image")
    kept = {s: [(p, lab) for p, lab in zip(ps, labs, strict=True) if p in decoded] for s, (ps, labs) in groups.items()}
    if "all" in kept:  # the loader's fixed 20% test split (seed 0), drawn among the readable files
        labels = torch.tensor([lab for _, lab in kept["all"]], dtype=torch.int64)
        rest, test = stratified_holdout(labels, folder.TEST_FRACTION, 0)
        kept = {"train": [kept["all"][i] for i in rest.tolist()], "test": [kept["all"][i] for i in test.tolist()]}
    out = _Images()
    for split in ("train", "val", "test"):
        for k, (p, lab) in enumerate(kept.get(split, [])):
            arr = decoded[p]
            mode, (w, h) = probed[p]
            out.split.append(split)
            out.index.append(k)
            out.label.append(lab)
            out.path.append(str(p.relative_to(root)) if p.is_relative_to(root) else str(p))
            out.digests.append(digest(arr))
            t = torch.from_numpy(arr).unsqueeze(0)
            out.thumbs.append(thumbnails(t))
            out.pixels.append(t[0])
            out.sizes[split][f"{w}x{h}"] += 1
            out.modes[split][mode] += 1
        arrays = [decoded[p] for p, _ in kept.get(split, [])]
        if arrays:
            sums = np.zeros((arrays[0].shape[0], 2))
            count = 0
            for a in arrays:
                x = a.reshape(a.shape[0], -1).astype(np.float64) / 255.0
                sums += np.stack([x.sum(1), (x * x).sum(1)], 1)
                count += x.shape[1]
            out.stats[split] = folder._stats_from_sums(sums, count)
    return out, classes, unreadable


# ---- the audit -----------------------------------------------------------------------------------------
@dataclass
class Audit:
    """What `audit` found; `to_dict()` is the `--json` output."""

    dataset: str
    source: str
    classes: list[str]
    splits: dict[str, dict[str, Any]]  # per split: images, per_class, balance, sizes, modes, mean, std
    unreadable: list[tuple[str, str]]  # (path, why)
    exact: list[dict[str, Any]]  # {"a", "b", "where"}: pairs of identical images
    near: list[dict[str, Any]]  # {"a", "b", "where", "hamming", "difference"}
    seconds: float
    files: list[str] = field(default_factory=list)

    def counts(self, kind: str) -> dict[str, int]:
        return dict(Counter(p["where"] for p in getattr(self, kind)))

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "source": self.source, "classes": self.classes, "splits": self.splits,
                "unreadable": [{"path": p, "why": w} for p, w in self.unreadable],
                "duplicates": {"exact": {"counts": self.counts("exact"), "pairs": self.exact},
                               "near": {"counts": self.counts("near"), "pairs": self.near,
                                        "rule": f"pHash Hamming <= {HAMMING} of 64 bits and 16x16 thumbnail mean "
                                                f"|difference| <= {PIXEL_DIFF} of 255"}},
                "seconds": self.seconds, "files": self.files}

    def __str__(self) -> str:
        total = sum(s["images"] for s in self.splits.values())
        lines = [f"{self.dataset}: {len(self.classes)} classes, {total:,} images ("
                 + ", ".join(f"{k} {v['images']:,}" for k, v in self.splits.items()) + f") from {self.source}",
                 f"{'split':<6} {'images':>8} {'per class':>15} {'balance':>8}  {'sizes':<22} {'modes':<14} mean / std"]
        for name, s in self.splits.items():
            counts = s["per_class"].values()
            sizes = ", ".join(f"{k}: {v:,}" for k, v in list(s["sizes"].items())[:2]) + (" ..." if len(s["sizes"]) > 2 else "")
            modes = ", ".join(f"{k}: {v:,}" for k, v in s["modes"].items())
            stats = ", ".join(f"{m:.4f}" for m in s["mean"]) + " / " + ", ".join(f"{v:.4f}" for v in s["std"])
            lines.append(f"{name:<6} {s['images']:>8,} {f'{min(counts):,}-{max(counts):,}':>15} {s['balance']:>8.2f}  "
                         f"{sizes:<22} {modes:<14} {stats}")
        lines.append("  balance: smallest class / largest class (1.00: balanced)")
        lines.append(f"unreadable files: {len(self.unreadable)}")
        lines += [f"  {p}: {w}" for p, w in self.unreadable[:LISTED]]
        for kind, title in (("exact", "exact duplicates (identical decoded pixels)"),
                            ("near", f"near-duplicates (pHash within {HAMMING} bits and 16x16 thumbnails within "
                                     f"{PIXEL_DIFF:g}/255 on average; exact ones not repeated)")):
            pairs = getattr(self, kind)
            counts = self.counts(kind)
            lines.append(f"{title}: {len(pairs)} pair(s)" + (": " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                                                             if counts else ""))
            for p in pairs[:LISTED]:
                extra = f"  (hamming {p['hamming']}, difference {p['difference']:.2f})" if kind == "near" else ""
                lines.append(f"  {p['where']:<12} {p['a']}  ~  {p['b']}{extra}")
            if len(pairs) > LISTED:
                lines.append(f"  ... {len(pairs) - LISTED} more (all in --json)")
        if self.files:
            lines.append("wrote " + ", ".join(self.files))
        lines.append(f"audited in {self.seconds:.1f} s")
        return "\n".join(lines)


def _where(a: str, b: str) -> str:
    if a == b:
        return f"within {a}"
    order = {"train": 0, "val": 1, "test": 2}
    a, b = sorted((a, b), key=order.get)
    return f"{a}/{b}"


def audit(data: str, *, data_dir: str | Path | None = None, out: str | Path | None = None) -> Audit:
    """Audit the dataset `data` (a registry name or `imagefolder:PATH`; see the module docstring). Writes
    `out/pairs.png` (the first pairs found, side by side) and `out/audit.json` when `out` is given."""
    start = time.perf_counter()
    if not isinstance(data, str) or not data.strip():
        raise CnnlabError(f"data must be a dataset name or imagefolder:PATH, got {data!r}")
    if data.startswith("imagefolder:"):
        root = Path(data[len("imagefolder:"):]).expanduser()
        if not root.is_dir():
            raise CnnlabError(f"imagefolder: {root} is not a folder (expected one sub-folder per class)")
        images, classes, unreadable = _from_folder(root)
        name, source = data, str(root)
    else:
        ds = load_dataset(data, data_dir=data_dir)
        images, classes, unreadable, name, source = _from_dataset(ds), list(ds.classes), [], ds.name, ds.source

    labels = np.array(images.label)
    splits_of = np.array(images.split)
    splits: dict[str, dict[str, Any]] = {}
    for split in ("train", "val", "test"):
        mask = splits_of == split
        if not mask.any():
            continue
        per_class = np.bincount(labels[mask], minlength=len(classes))
        mean, std = images.stats[split]
        splits[split] = {"images": int(mask.sum()), "per_class": dict(zip(classes, per_class.tolist(), strict=True)),
                         "balance": float(per_class.min() / per_class.max()) if per_class.max() else 0.0,
                         "sizes": dict(images.sizes[split].most_common()), "modes": dict(images.modes[split].most_common()),
                         "mean": list(mean), "std": list(std)}

    # exact duplicates: every pair inside a group of equal digests
    groups: dict[bytes, list[int]] = defaultdict(list)
    for k, d in enumerate(images.digests):
        groups[d].append(k)
    exact, same = [], set()
    for members in groups.values():
        for x, a in enumerate(members):
            for b in members[x + 1:]:
                exact.append({"a": images.name(a), "b": images.name(b), "where": _where(images.split[a], images.split[b]),
                              "_k": (a, b)})
                same.add((a, b))

    # near duplicates: close hashes, then close thumbnails
    thumbs = torch.cat(images.thumbs)
    hashes = phash(thumbs)
    small = F.avg_pool2d(thumbs.unsqueeze(1), 2)[:, 0]  # (N, 16, 16)
    ii, jj = hamming_pairs(hashes, HAMMING)
    near = []
    for s in range(0, len(ii), 65536):
        a, b = torch.from_numpy(ii[s:s + 65536]), torch.from_numpy(jj[s:s + 65536])
        diff = (small[a] - small[b]).abs().mean((1, 2))
        for x in torch.nonzero(diff <= PIXEL_DIFF).flatten().tolist():
            ka, kb = int(a[x]), int(b[x])
            if (ka, kb) in same:
                continue
            near.append({"a": images.name(ka), "b": images.name(kb), "where": _where(images.split[ka], images.split[kb]),
                         "hamming": int(np.bitwise_count(hashes[ka] ^ hashes[kb])), "difference": float(diff[x]),
                         "_k": (ka, kb)})
    rank = {"train/test": 0, "val/test": 1, "train/val": 2}
    near.sort(key=lambda p: (rank.get(p["where"], 3), p["difference"]))
    exact.sort(key=lambda p: rank.get(p["where"], 3))

    result = Audit(name, source, classes, splits, unreadable, exact, near, 0.0)
    if out is not None:
        out = Path(out)
        shown = (exact + near)[:SHOWN_PAIRS]
        if shown:
            plot_pairs(images, shown, out / "pairs.png", f"{name}: {len(exact)} exact and {len(near)} near-duplicate "
                       f"pair(s); the first {len(shown)}")
            result.files.append(str(out / "pairs.png"))
        result.files.append(str(out / "audit.json"))
    for p in exact + near:
        p.pop("_k", None)
    result.seconds = time.perf_counter() - start
    if out is not None:
        atomic_write_json(Path(out) / "audit.json", result.to_dict())
    return result


def plot_pairs(images: _Images, pairs: list[dict[str, Any]], path: Path, title: str) -> None:
    """Each pair side by side, four pairs to a row, captioned with where the images are."""
    cols = min(4, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig, axes = subplots(rows, 2 * cols, figsize=(2.2 * cols * 2 * 0.75, 2.0 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for n, p in enumerate(pairs):
        r, c = divmod(n, cols)
        for side, k in enumerate(p["_k"]):
            ax = axes[r, 2 * c + side]
            img = images.image(k).numpy()
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(img[:3].transpose(1, 2, 0))
            name = images.name(k)
            ax.set_title(("…" + name[-22:]) if len(name) > 23 else name, fontsize=6)
        kind = f"near, {p['difference']:.1f}" if "hamming" in p else "exact"
        axes[r, 2 * c].text(1.0, -0.08, f"{p['where']} ({kind})", transform=axes[r, 2 * c].transAxes,
                            ha="center", va="top", fontsize=6)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
