"""Top-k predictions of a trained run for image files, converted the way the training data was.

Any image is brought to the run's input: mode L (grayscale) or RGB to match its channel count, resized
to its (H, W) with bilinear filtering, scaled to [0, 1], normalised with the training mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import CnnlabError
from cnnlab.train.finite import check_finite_weights
from cnnlab.train.run import ModelCard, open_run
from cnnlab.train.tta import check_tta, tta_log_probs


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class name, probability in [0, 1]), most probable first

    def __str__(self) -> str:
        return f"{self.image}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in self.top)


def load_image(path: str | Path, input_size: tuple[int, int, int]) -> torch.Tensor:
    """An image file -> uint8 `(C, H, W)` matching `input_size`."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    c, h, w = input_size
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "P") and c == 3:
                img = img.convert("RGBA")  # transparency -> white, not black, behind the object
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            img = img.convert("L" if c == 1 else "RGB")
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise CnnlabError(f"image not found: '{path}'") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CnnlabError(f"cannot read image '{path}': {e}; give a PNG, JPEG or other format Pillow reads") from None
    if c not in (1, 3):
        raise CnnlabError(f"the model takes {c}-channel images; only 1 (grayscale) or 3 (RGB) can be read from files")
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if c == 1 else t.permute(2, 0, 1).contiguous()  # (C, H, W)


def predict_tensor(model: torch.nn.Module, card: ModelCard, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """uint8 `(N, C, H, W)` -> class probabilities `(N, K)` (fp32, CPU); with a `tta` mode the mean of
    the probabilities over the views of each image (`cnnlab.train.tta`), as `cnnlab eval` computes them."""
    check_tta(tta)
    mean = torch.tensor(card.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.std).view(1, -1, 1, 1)
    with torch.inference_mode():
        return tta_log_probs(model, images, lambda view: (view.float() / 255.0 - mean) / std, tta).exp()


def predict(run: str | Path, images: list[str | Path], *, top_k: int = 5, which: str = "best",
            tta: str | None = None) -> list[Prediction]:
    """Top-`top_k` classes with probabilities for each image file. `tta`: a `cnnlab.train.tta` mode; None:
    as the run was evaluated during training."""
    if not images:
        raise CnnlabError("no images given; pass one or more image files")
    if not isinstance(top_k, int) or top_k < 1:
        raise CnnlabError(f"top-k must be a positive integer, got {top_k!r}")
    run_dir = open_run(run)
    model, card = run_dir.load_model(which)
    check_finite_weights(model.state_dict(), run_dir.path / f"{which}.safetensors", which)
    if tta is None:
        tta = run_dir.read_config().get("config", {}).get("tta", "none")
    batch = torch.stack([load_image(p, card.input_size) for p in images])
    probs = predict_tensor(model, card, batch, tta)
    k = min(top_k, card.num_classes)
    values, indices = probs.topk(k, dim=1)
    return [Prediction(str(path), [(card.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist(), strict=True)])
            for path, vs, ix in zip(images, values, indices, strict=True)]
