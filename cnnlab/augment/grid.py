"""The picture of what a pipeline does: originals in the first column, augmented copies to the right.

    preview("fashion-mnist", "lecture", "grid.png", n=8, copies=7, seed=0)
    preview("digits", "none", "mix.png", mix="mixup:0.2,cutmix:1.0")   # MixUp / CutMix after the pipeline

With a mix, copy k of image i is mixed with copy k of image i + k + 1 (another image of the grid); a
CutMix box is outlined in red and each mixed copy is captioned with its target, "own:λ% other:(1-λ)%" (class
indices).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from cnnlab.augment.mixing import CUTMIX, NONE, Mix, parse_mix
from cnnlab.augment.pipeline import Pipeline, parse_pipeline
from cnnlab.core.files import atomic_write
from cnnlab.core.preprocess import to_unit
from cnnlab.data import load_dataset
from cnnlab.errors import CnnlabError

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_BACKGROUND = 255  # white between cells
_MIN_CELL = 96  # pixels: small images (28x28) are enlarged by an integer factor to at least this
_CAPTION = 12  # pixels of text under each row of mixed copies


def augment_grid(images: Tensor, augment: str | Pipeline, copies: int = 7,
                 generator: torch.Generator | None = None, mix: str | Mix | None = None,
                 labels: Tensor | None = None) -> np.ndarray:
    """images: (n, C, H, W) float in [0, 1] -> an RGB picture, uint8 array (rows, cols, 3): row i is
    image i, then `copies` independent augmentations of it (one pipeline call on n * copies images),
    then mixed by `mix` if given (boxes outlined, captions from `labels`; see the module docstring)."""
    pipeline = parse_pipeline(augment)
    mixer = parse_mix(mix)
    if copies < 1:
        raise CnnlabError(f"copies={copies} must be >= 1")
    n, c, h, w = images.shape
    augmented = pipeline(images.repeat_interleave(copies, dim=0), generator)  # (n*copies, C, H', W')
    ah, aw = augmented.shape[2:]
    params = None
    if mixer is not None:
        i, k = torch.arange(n).repeat_interleave(copies), torch.arange(copies).repeat(n)
        partner = ((i + k + 1) % n) * copies + k  # copy k of another image
        params = mixer.sample(augmented.shape, generator, augmented.device, partner)
        augmented = mixer.apply(augmented, params)
        labels = labels if labels is not None else torch.zeros(n, dtype=torch.long)
        labels = labels.cpu().repeat_interleave(copies)
    cell_h, cell_w = max(h, ah), max(w, aw)
    zoom = max(1, math.ceil(_MIN_CELL / max(cell_h, cell_w)))
    gap, sep = 2, 8  # pixels between cells; after the originals' column

    def cell(img: Tensor) -> np.ndarray:
        """(C, h, w) float -> (cell_h*zoom, cell_w*zoom, 3) uint8, image centred on the background."""
        a = (img.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        a = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[:, :, :3]
        out = np.full((cell_h, cell_w, 3), _BACKGROUND, np.uint8)
        top, left = (cell_h - a.shape[0]) // 2, (cell_w - a.shape[1]) // 2
        out[top:top + a.shape[0], left:left + a.shape[1]] = a
        return out.repeat(zoom, axis=0).repeat(zoom, axis=1)

    ch, cw = cell_h * zoom, cell_w * zoom
    caption = _CAPTION if params is not None else 0  # room under each row for the mixed targets
    height = n * (ch + caption) + (n + 1) * gap
    width = (copies + 1) * cw + (copies + 2) * gap + sep
    picture = np.full((height, width, 3), _BACKGROUND, np.uint8)
    augmented = augmented.cpu().view(n, copies, c, ah, aw)
    for i in range(n):
        y = gap + i * (ch + caption + gap)
        picture[y:y + ch, gap:gap + cw] = cell(images[i].cpu())
        for k in range(copies):
            x = 2 * gap + sep + (k + 1) * cw + k * gap
            picture[y:y + ch, x:x + cw] = cell(augmented[i, k])
    if params is None:
        return picture
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    p = {key: v.cpu() for key, v in params.items()}
    off_y, off_x = (cell_h - ah) // 2 * zoom, (cell_w - aw) // 2 * zoom
    for j in range(n * copies):
        i, k = divmod(j, copies)
        y = gap + i * (ch + caption + gap)
        x = 2 * gap + sep + (k + 1) * cw + k * gap
        method = int(p["method"][j])
        if method == CUTMIX and int(p["bottom"][j]) > int(p["top"][j]) and int(p["right"][j]) > int(p["left"][j]):
            box = (x + off_x + int(p["left"][j]) * zoom, y + off_y + int(p["top"][j]) * zoom,
                   x + off_x + int(p["right"][j]) * zoom - 1, y + off_y + int(p["bottom"][j]) * zoom - 1)
            draw.rectangle(box, outline=(230, 30, 30), width=max(1, zoom // 6))
        own = round(100 * float(p["lam"][j]))
        text = ("unmixed" if method == NONE else
                f"{int(labels[j])}:{own}%  {int(labels[int(p['partner'][j])])}:{100 - own}%")
        draw.text((x + 2, y + ch + 1), text, fill=(0, 0, 0) if method != NONE else (140, 140, 140))
    return np.asarray(image)


def check_out_path(out: str | Path) -> Path:
    """Refuse an output whose folder does not exist or whose suffix is not an image type, before work."""
    out = Path(out)
    if out.suffix.lower() not in _IMAGE_SUFFIXES:
        raise CnnlabError(f"--out {str(out)!r} must end in one of {', '.join(_IMAGE_SUFFIXES)} (e.g. grid.png)")
    if not out.parent.is_dir():
        raise CnnlabError(f"--out {str(out)!r}: folder {str(out.parent)!r} does not exist; create it first")
    return out


def save_picture(picture: np.ndarray, out: str | Path) -> Path:
    """Write an (rows, cols, 3) uint8 array as an image, atomically (temporary file, then rename)."""
    out = check_out_path(out)
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format=Image.registered_extensions()[out.suffix.lower()])
    return atomic_write(out, buf.getvalue())


def preview(data: str, augment: str | Pipeline, out: str | Path, *, n: int = 8, copies: int = 7,
            seed: int = 0, data_dir: str | Path | None = None, mix: str | Mix | None = None) -> Path:
    """Save a grid of the first `n` training images of dataset `data` (first column) and `copies`
    augmentations of each under `augment` (seeded by `seed`), then mixed by `mix` if given, to `out`;
    returns the path."""
    pipeline = parse_pipeline(augment)  # bad input fails here, before the data is loaded
    mixer = parse_mix(mix)
    out = check_out_path(out)
    if not 1 <= n <= 256 or not 1 <= copies <= 64:
        raise CnnlabError(f"n={n} must be in 1..256 and copies={copies} in 1..64")
    dataset = load_dataset(data, data_dir=data_dir)
    pipeline.output_size(tuple(dataset.input_size))  # type: ignore[arg-type]
    images, labels = next(iter(dataset.train.batches(n)))  # uint8 (n, C, H, W)
    generator = torch.Generator().manual_seed(seed)
    return save_picture(augment_grid(to_unit(images), pipeline, copies, generator, mixer, labels), out)
