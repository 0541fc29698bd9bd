"""Top-k predictions of a trained run for image files, converted the way the training data was.

Any image is brought to the run's input: mode L (grayscale) or RGB to match its channel count, resized
to its (H, W) with bilinear filtering, scaled to [0, 1], normalised with the training mean and std.
Each `Prediction` says what was done (`converted`) and warns when the image looks like the negative of
the training data (a dark object on a light background where the data has light objects on dark).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnlab.core.preprocess import Preprocess
from cnnlab.core.run import ModelCard, open_run
from cnnlab.errors import CnnlabError
from cnnlab.training.run import load_model
from cnnlab.training.tta import check_tta, tta_log_probs


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class name, probability in [0, 1]), most probable first
    converted: str = ""  # what was done to the file, e.g. "RGB 640x480 -> grayscale, resized to 28x28"
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.image}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in self.top)


def load_image(path: str | Path, input_size: tuple[int, int, int]) -> torch.Tensor:
    """An image file -> uint8 `(C, H, W)` matching `input_size`."""
    return read_image(path, input_size)[0]


def read_image(path: str | Path, input_size: tuple[int, int, int]) -> tuple[torch.Tensor, str]:
    """An image file -> (uint8 `(C, H, W)` matching `input_size`, what was done: "RGB 640x480 -> grayscale, ...")."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 - Pillow only for files

    c, h, w = input_size
    if c not in (1, 3):
        raise CnnlabError(f"the model takes {c}-channel images; only 1 (grayscale) or 3 (RGB) can be read from files")
    try:
        with Image.open(path) as img:
            img.load()
            done = [f"{img.mode} {img.width}x{img.height}"]
            if img.mode in ("RGBA", "LA", "P") and c == 3:
                img = img.convert("RGBA")  # transparency -> white, not black, behind the object
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
                done.append("transparency on white")
            target = "L" if c == 1 else "RGB"
            if img.mode != target:
                done.append("grayscale" if c == 1 else "RGB")
            img = img.convert(target)
            if img.size != (w, h):
                done.append(f"resized to {w}x{h}")
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise CnnlabError(f"image not found: '{path}'") from None
    except Image.DecompressionBombError as e:
        raise CnnlabError(f"image '{path}' is too large to open safely ({e}); give a smaller image") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise CnnlabError(f"cannot read image '{path}': {e}; give a PNG, JPEG or other format Pillow reads") from None
    t = torch.from_numpy(arr.copy())
    converted = done[0] + (" -> " + ", ".join(done[1:]) if len(done) > 1 else " (as is)")
    return (t.unsqueeze(0) if c == 1 else t.permute(2, 0, 1).contiguous()), converted  # (C, H, W)


def polarity_warning(image: torch.Tensor, data_mean: tuple[float, ...]) -> str:
    """A warning when a uint8 `(C, H, W)` image is light where the training data is dark, or the reverse.

    Only for data with a clear background (mean brightness below 0.35 or above 0.65 of full scale, as
    MNIST, Fashion-MNIST and digits at ~0.13-0.30): an image on the other side of 0.5 is then most
    likely the negative of what the model saw (a dark object drawn on white paper)."""
    data = sum(data_mean) / len(data_mean)
    seen = float(image.float().mean()) / 255.0
    if not (data < 0.35 or data > 0.65) or (seen - 0.5) * (data - 0.5) >= 0:
        return ""
    light, dark = ("light", "dark") if seen > 0.5 else ("dark", "light")
    return (f"the image is mostly {light} (mean brightness {seen:.2f}) but the training images are mostly {dark} "
            f"({data:.2f}): if it is a {dark} object on a {light} background, invert it first (PIL.ImageOps.invert)")


def predict_tensor(model: torch.nn.Module, card: ModelCard, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """uint8 `(N, C, H, W)` -> class probabilities `(N, K)` (fp32, CPU); with a `tta` mode the mean of
    the probabilities over the views of each image (`cnnlab.training.tta`), as `cnnlab eval` computes them;
    calibrated with the card's temperature (`cnnlab calibrate`; 1.0 until then)."""
    check_tta(tta)
    prep = Preprocess(card.mean, card.std, images.device, channels_last=False)
    with torch.inference_mode():
        return tta_log_probs(model, images, prep, tta, temperature=card.temperature).exp()


def predict(run: str | Path, images: list[str | Path], *, top_k: int = 5, which: str = "best",
            tta: str | None = None) -> list[Prediction]:
    """Top-`top_k` classes with probabilities for each image file. `tta`: a `cnnlab.training.tta` mode; None:
    as the run was evaluated during training."""
    if not images:
        raise CnnlabError("no images given; pass one or more image files")
    if not isinstance(top_k, int) or top_k < 1:
        raise CnnlabError(f"top-k must be a positive integer, got {top_k!r}")
    if tta is not None:
        check_tta(tta)  # before the model is loaded
    run_dir = open_run(run)
    model, card = load_model(run_dir, which)
    if tta is None:
        tta = run_dir.read_config().get("config", {}).get("tta", "none")
    read = [read_image(p, card.input_size) for p in images]
    batch = torch.stack([t for t, _ in read])
    probs = predict_tensor(model, card, batch, tta)
    k = min(top_k, card.num_classes)
    values, indices = probs.topk(k, dim=1)
    out = []
    for path, (image, converted), vs, ix in zip(images, read, values, indices, strict=True):
        warning = polarity_warning(image, card.mean)
        out.append(Prediction(str(path), [(card.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist(), strict=True)],
                              converted, [warning] if warning else []))
    return out
