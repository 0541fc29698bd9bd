"""What a trained network looks at, as tensors: kernels, feature maps, saliency, Grad-CAM, worst errors.

No files and no plotting here (see draw.py); every function takes a model and normalised inputs
`(N, C, H, W)` float32, the way the model was trained to read them.

Forward hooks see a module's output before later layers change it, except when a later layer works
in place (`nn.ReLU(inplace=True)` in VGG and AlexNet overwrites the conv output that a hook kept).
`hookable()` therefore works on a copy of the model with every `inplace` flag turned off.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.core.preprocess import Preprocess
from cnnlab.errors import CnnlabError, did_you_mean


def hookable(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with in-place operations turned off (see the module docstring)."""
    clone = copy.deepcopy(model).eval()
    for m in clone.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    return clone


def _dry_run(model: nn.Module, input_size: tuple[int, int, int], handles: list) -> None:
    """One no-grad forward pass of a zero image (1, C, H, W) in eval mode, for the hooks in `handles`;
    the hooks are removed and the model's train/eval mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def spatial_layers(model: nn.Module, input_size: tuple[int, int, int]) -> list[tuple[str, tuple[int, ...]]]:
    """`(name, (C, H, W))` of every named module whose output is a feature map, in the order they finish.

    One forward pass of a zero image. Containers count too (`layer3`, `features`), since stage names
    are what `feature_info` gives; a module called twice is listed at its first call.
    """
    found: dict[str, tuple[int, ...]] = {}

    def hook(name):
        def record(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and name not in found:
                found[name] = tuple(output.shape[1:])
        return record

    _dry_run(model, input_size, [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n])
    return list(found.items())


def first_conv(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[str, nn.Conv2d]:
    """The first `nn.Conv2d` the forward pass calls (not the first one registered), with its name."""
    order: list[str] = []
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        raise CnnlabError(f"model {type(model).__name__} has no Conv2d layer, so it has no kernels to show")
    _dry_run(model, input_size,
             [m.register_forward_pre_hook(lambda _m, _i, n=n: order.append(n)) for n, m in convs.items()])
    name = order[0] if order else next(iter(convs))
    return name, convs[name]


def check_layers(layers: list[str], valid: list[str]) -> None:
    """Refuse an unknown layer name with the closest valid one and the list of valid names."""
    for name in layers:
        if name not in valid:
            shown = ", ".join(valid[:40]) + (f", … ({len(valid) - 40} more)" if len(valid) > 40 else "")
            raise CnnlabError(f"unknown layer '{name}'{did_you_mean(name, valid)}; layers with feature maps: {shown}")


def default_layers(model: nn.Module, valid: list[str], most: int = 4) -> list[str]:
    """A few layers spread over depth: the first feature map, then the model's stages (`feature_info`).

    Without `feature_info` (a foreign module), `most` layers evenly spaced over the valid ones.
    """
    stages = [f["name"] for f in getattr(model, "feature_info", []) or [] if f.get("name") in valid]
    picked = list(dict.fromkeys([valid[0], *stages])) if stages else valid
    if len(picked) > most:  # evenly spaced, always keeping the first and the last
        picked = [picked[round(i * (len(picked) - 1) / (most - 1))] for i in range(most)]
    return list(dict.fromkeys(picked))


def last_conv_stage(model: nn.Module, input_size: tuple[int, int, int]) -> str:
    """Where Grad-CAM looks by default: the last stage of `feature_info` (the last convolutional block).

    Without `feature_info`, the last leaf module with a map larger than 1x1: global pooling also
    outputs `(N, C, 1, 1)`, where every pixel would get the same weight.
    """
    layers = spatial_layers(model, input_size)
    names = [n for n, _ in layers]
    stages = [f["name"] for f in getattr(model, "feature_info", []) or [] if f.get("name") in names]
    if stages:
        return stages[-1]
    modules = dict(model.named_modules())
    leaves = [n for n, shape in layers if shape[1] * shape[2] > 1 and not any(True for _ in modules[n].children())]
    if not leaves:
        raise CnnlabError("this model has no layer with a feature map larger than 1x1 for Grad-CAM; use --method gradient")
    return leaves[-1]


def feature_maps(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    """Outputs of the named layers for one image: `x` `(1, C, H, W)` -> `{name: (C', H', W')}`."""
    model = hookable(model)
    modules = dict(model.named_modules())
    check_layers(layers, [n for n in modules if n])
    out: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_module, _inputs, output):
            if name not in out and isinstance(output, torch.Tensor):
                out[name] = output.detach()[0].float().cpu()
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: out[n] for n in layers if n in out}


def gradient_saliency(model: nn.Module, x: torch.Tensor, target: int | None = None) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Simonyan et al. 2014: d(logit of the class)/d(input) for one image.

    Args:
        x: `(1, C, H, W)` normalised image.
        target: class index; default the predicted one.

    Returns:
        `(gradient (1, C, H, W), class index, probabilities (K,))`. The usual saliency map is
        `gradient.abs().amax(dim=1)`: the strongest channel's |gradient| at each pixel.
    """
    model = hookable(model)
    x = x.detach().clone().float().requires_grad_(True)
    logits = model(x).float()  # (1, K)
    cls = int(logits.argmax(1)) if target is None else int(target)
    (grad,) = torch.autograd.grad(logits[0, cls], x)
    return grad.detach(), cls, torch.softmax(logits.detach()[0], 0)


def grad_cam(model: nn.Module, x: torch.Tensor, layer: str, target: int | None = None) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Selvaraju et al. 2017: ReLU(Σ_k α_k A_k), α_k = spatial mean of d(logit)/dA_k, at `layer`.

    Args:
        x: `(1, C, H, W)` normalised image.
        layer: a module whose output is a feature map A `(1, K, h, w)` (default in `show`: the last one).
        target: class index; default the predicted one.

    Returns:
        `(cam (H, W) in [0, 1] upsampled bilinearly to the input, class index, probabilities (K,))`.
        `cam` is all zeros when no channel argues for the class.
    """
    model = hookable(model)
    modules = dict(model.named_modules())
    check_layers([layer], [n for n in modules if n])
    kept: list[torch.Tensor] = []
    handle = modules[layer].register_forward_hook(lambda _m, _i, output: kept.append(output))
    try:
        # the input requires grad so that A is in the graph even when every parameter is frozen
        logits = model(x.detach().float().requires_grad_(True)).float()
    finally:
        handle.remove()
    if not kept or kept[0].dim() != 4:
        raise CnnlabError(f"layer '{layer}' does not output a feature map (N, C, H, W); choose a convolutional layer")
    acts = kept[0]  # (1, K, h, w)
    cls = int(logits.argmax(1)) if target is None else int(target)
    (grads,) = torch.autograd.grad(logits[0, cls], acts)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (1, K, 1, 1): α_k
    cam = F.relu((weights * acts).sum(1, keepdim=True)).detach()  # (1, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]  # (H, W)
    top = float(cam.max())
    return (cam / top if top > 0 else cam), cls, torch.softmax(logits.detach()[0], 0)


@dataclass
class Mistake:
    """One misclassified image of a split."""

    index: int  # position in the split
    true: int
    predicted: int
    confidence: float  # softmax probability of the (wrong) predicted class, in [0, 1]


@torch.inference_mode()
def predict_images(model: nn.Module, images: torch.Tensor, mean, std, batch_size: int = 256,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 `(N, C, H, W)` -> (predicted class `(N,)` int64, its softmax probability `(N,)`), float32 on the CPU.

    Normalised with the run's per-channel `mean` and `std`, as `cnnlab predict` does; the logits are divided
    by `temperature` (the model card's, from `cnnlab calibrate`) before the softmax.
    """
    model.eval()
    prep = Preprocess(mean, std, images.device, channels_last=False)
    confs, preds = [], []
    for i in range(0, len(images), batch_size):
        x = prep(images[i:i + batch_size])
        conf, pred = torch.softmax(model(x).float() / temperature, dim=1).max(1)
        confs.append(conf)
        preds.append(pred)
    return torch.cat(preds), torch.cat(confs)


def confident_mistakes(predicted: torch.Tensor, confidence: torch.Tensor, labels: torch.Tensor,
                       count: int = 16) -> tuple[list[Mistake], int]:
    """The `count` misclassified images the model was surest about, most confident first.

    Args:
        predicted, confidence: `(N,)` from `predict_images`.
        labels: int64 `(N,)` true classes.

    Returns:
        `(mistakes, number of misclassified images in total)`.
    """
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True, stable=True)][:count]
    return ([Mistake(int(i), int(labels[i]), int(predicted[i]), float(confidence[i])) for i in order.tolist()],
            int(wrong.numel()))
