"""`cnnlab show …` for a run directory: each function writes one PNG and says what it shows.

    show_filters(run)                      the first layer's kernels, one tile per output channel
    show_features(run, image, layers)      feature maps of one image at chosen layers
    show_saliency(run, image, method)      which pixels drove the prediction (gradient or Grad-CAM)
    show_errors(run)                       the most confidently misclassified test images

Images are read and converted exactly as `cnnlab predict` reads them (`cnnlab.training.predict.load_image`:
the run's channels and size, then its mean and std). The PNG goes to `out`, or to RUN/show/<what>.png.
The model is rebuilt on the CPU in float32: these pictures are about one image or one pass, not speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnlab.core.files import atomic_write
from cnnlab.core.preprocess import Preprocess
from cnnlab.core.run import open_run
from cnnlab.errors import CnnlabError, positive_int
from cnnlab.inspect.visual import draw, maps
from cnnlab.training.inputs import load_data
from cnnlab.training.predict import load_image
from cnnlab.training.run import load_model

METHODS = ("gradient", "gradcam")


@dataclass
class Shown:
    """What a show function wrote: the PNG, one line saying what is in it, and the numbers behind it."""

    path: Path
    what: str
    data: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.what}\nwrote {self.path}"


# ---- shared steps --------------------------------------------------------------------------------
def _out_path(run_path: Path, out: str | Path | None, default: str) -> Path:
    path = Path(out) if out is not None else run_path / "show" / default
    if path.suffix.lower() != ".png":
        raise CnnlabError(f"output file must end in .png, got '{path}'")
    if path.is_dir():
        raise CnnlabError(f"output '{path}' is a folder; give a file name ending in .png")
    return path


def _write(path: Path, png: bytes) -> Path:
    return atomic_write(path, png)


def _load(run: str | Path, which: str):
    """(RunDir, model in eval mode on the CPU, ModelCard)."""
    run_dir = open_run(run)
    model, card = load_model(run_dir, which)
    return run_dir, model.float().eval(), card


def load_input(image: str | Path, card) -> tuple[torch.Tensor, torch.Tensor]:
    """An image file -> (uint8 `(C, H, W)` at the run's size, normalised float `(1, C, H, W)`)."""
    pixels = load_image(image, tuple(card.input_size))
    return pixels, Preprocess(card.mean, card.std, channels_last=False)(pixels.unsqueeze(0))


def _stem(image: str | Path) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in Path(image).stem)[:40] or "image"


def run_split(run_dir, card, split: str = "test", data=None, data_dir=None):
    """The run's dataset split (loaded as training loaded it), or `split` of `data` if given."""
    cfg = run_dir.read_config().get("config", {}) if run_dir.exists() else {}
    image_size = cfg.get("image_size") if data is None else None
    ds = load_data(card.dataset if data is None else data, data_dir=data_dir or cfg.get("data_dir"),
                   image_size=image_size, val_fraction=0.0)
    if tuple(ds.input_size) != tuple(card.input_size) or len(ds.classes) != card.num_classes:
        raise CnnlabError(f"dataset images are {tuple(ds.input_size)} with {len(ds.classes)} classes, but the model "
                          f"was trained on {tuple(card.input_size)} with {card.num_classes}")
    part = getattr(ds, split, None)
    if part is None or len(part) == 0:
        raise CnnlabError(f"dataset '{ds.name}' has no '{split}' split; choose test or train")
    return part


# ---- the four pictures ---------------------------------------------------------------------------
def show_filters(run: str | Path, *, out: str | Path | None = None, which: str = "best") -> Shown:
    """The first convolution's kernels as a grid of tiles (one per output channel); see `draw.kernel_grid`."""
    run_dir, model, card = _load(run, which)
    path = _out_path(run_dir.path, out, "filters.png")
    name, conv = maps.first_conv(model, tuple(card.input_size))
    weight = conv.weight  # (O, I, kh, kw)
    o, i, kh, kw = weight.shape
    _write(path, draw.png_bytes(draw.kernel_grid(weight)))
    colour = "colour (RGB)" if i == 3 else "blue negative, white 0, red positive"
    return Shown(path, f"first layer '{name}': {o} kernels of {kh}x{kw} over {i} channel(s), {colour}",
                 {"layer": name, "shape": (o, i, kh, kw)})


def show_features(run: str | Path, image: str | Path, *, layers: list[str] | None = None,
                  out: str | Path | None = None, which: str = "best", per_layer: int = 12) -> Shown:
    """Feature maps of one image at `layers` (module names; default a few spread over depth)."""
    positive_int("channels per layer", per_layer)
    run_dir, model, card = _load(run, which)
    valid = [n for n, _ in maps.spatial_layers(model, tuple(card.input_size))]
    if not valid:
        raise CnnlabError("this model has no layer that outputs a feature map (N, C, H, W)")
    chosen = list(layers) if layers else maps.default_layers(model, valid)
    maps.check_layers(chosen, valid)
    path = _out_path(run_dir.path, out, f"features-{_stem(image)}.png")
    pixels, x = load_input(image, card)
    fmaps = maps.feature_maps(model, x, chosen)
    title = f"{Path(image).name}: feature maps, the {per_layer} most active channels per layer"
    _write(path, draw.features_figure(pixels, fmaps, per_layer=per_layer, title=title))
    shapes = {n: tuple(t.shape) for n, t in fmaps.items()}
    return Shown(path, "feature maps at " + ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in shapes.items()),
                 {"layers": chosen, "shapes": shapes, "maps": fmaps})


def show_saliency(run: str | Path, image: str | Path, *, method: str = "gradient", layer: str | None = None,
                  out: str | Path | None = None, which: str = "best") -> Shown:
    """Which pixels drove the prediction: |d logit / d input| ("gradient") or Grad-CAM ("gradcam").

    Grad-CAM reads `layer` (default the last layer with a feature map); the gradient method has no layer.
    """
    if method not in METHODS:
        raise CnnlabError(f"unknown saliency method '{method}'; choose one of {', '.join(METHODS)}")
    if layer is not None and method != "gradcam":
        raise CnnlabError("--layer applies to --method gradcam only (the gradient method differentiates the input)")
    run_dir, model, card = _load(run, which)
    path = _out_path(run_dir.path, out, f"saliency-{method}-{_stem(image)}.png")
    pixels, x = load_input(image, card)
    data: dict[str, Any] = {}
    if method == "gradient":
        grad, cls, probs = maps.gradient_saliency(model, x)
        heat = grad.abs().amax(dim=1)[0]  # (H, W): the strongest channel at each pixel
        heat = heat / heat.max() if float(heat.max()) > 0 else heat
        data["gradient"] = grad
        how, short = "|d logit / d pixel| (max over channels, scaled to 1)", "input gradient"
    else:
        valid = [n for n, _ in maps.spatial_layers(model, tuple(card.input_size))]
        layer = layer or maps.last_conv_stage(model, tuple(card.input_size))
        maps.check_layers([layer], valid)
        heat, cls, probs = maps.grad_cam(model, x, layer)
        data["layer"] = layer
        how = short = f"Grad-CAM at '{layer}'"
    label = card.classes[cls]
    data.update(heat=heat, predicted=cls, probability=float(probs[cls]))
    title = f"{Path(image).name}: predicted '{label}' ({100 * float(probs[cls]):.1f}%); {how}"
    _write(path, draw.heatmap_figure(pixels, heat, method, title))
    return Shown(path, f"saliency ({short}) for predicted class '{label}' ({100 * float(probs[cls]):.1f}%)", data)


def show_errors(run: str | Path, *, count: int = 16, split: str = "test", out: str | Path | None = None,
                which: str = "best", data=None, data_dir=None) -> Shown:
    """The `count` misclassified images of `split` the model was most confident about, with their labels."""
    positive_int("count", count)
    run_dir, model, card = _load(run, which)
    path = _out_path(run_dir.path, out, f"errors-{split}.png" if split != "test" else "errors.png")
    part = run_split(run_dir, card, split, data, data_dir)
    predicted, confidence = maps.predict_images(model, part.images, card.mean, card.std)
    mistakes, total = maps.confident_mistakes(predicted, confidence, part.labels, count)
    captions = [f"true: {card.classes[m.true]}\npred: {card.classes[m.predicted]} {100 * m.confidence:.0f}%"
                for m in mistakes]
    title = (f"the {len(mistakes)} most confident of {total} misclassified {split} images "
             f"({100 * (1 - total / len(part)):.2f}% accuracy on {len(part)})")
    _write(path, draw.mistakes_figure([part.images[m.index] for m in mistakes], captions, title))
    return Shown(path, title, {"mistakes": mistakes, "total_wrong": total, "images": len(part)})
