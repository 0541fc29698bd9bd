"""Backbones: a trained ConvNet to transfer from, and where it can be cut.

`load_backbone(text)` accepts
- a cnnlab run directory (`runs/simple_cnn-fashion-mnist-…`): its best weights, input size and
  normalisation come from the model card;
- `NAME:PATH`: a zoo model plus a weights file, a torchvision `.pth` state dict (read with
  `torch.load(weights_only=True)`: a pickle that would run code is refused unrun) or `.safetensors`;
  the zoo's state_dict keys equal torchvision's, so torchvision's published files load unchanged;
- `NAME:imagenet`: torchvision's published ImageNet weights, fetched through torchvision's own mechanism
  (`torch.hub.load_state_dict_from_url` with `check_hash=True`: the file name carries the first hex digits
  of its SHA-256 and a download that does not match is deleted and refused), cached under `$TORCH_HOME`;
- `NAME` or `NAME:random`: the architecture with random weights (for tests and baselines).

Cut points (`cut_points(model)`), in forward order: every stage of `feature_info`, `features` (the last
feature map, `forward_features`), per-architecture named cuts (VGG/AlexNet `fc6`, `fc7`), and
`pre_logits` (the vector the classifier reads: the default). Any other module name in
`model.named_modules()` works too (its output, flattened).

Be exact where the course is loose: for VGG-16 at 224x224, `features` (the last max-pool, `features.30`)
is 7x7x512 = 25,088 numbers; the 4,096-vector of Razavian et al. is `fc6`, the output of the first
fully-connected layer after its ReLU (`classifier.1`); `pre_logits` is fc7 after its ReLU and dropout
(`classifier.4`/`classifier.5`), what fc8 reads.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.core.run import open_run
from cnnlab.core.weights import load_safetensors, safe_torch_load
from cnnlab.errors import CnnlabError, did_you_mean
from cnnlab.models import create_model, is_model_name, list_models, model_info
from cnnlab.models.timm_models import (
    create_timm_model,
    describe_config,
    intermediate,
    is_timm_name,
    pretrained_config,
    split_timm_name,
)
from cnnlab.training.run import build_model, load_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Per-architecture cut points with names from the papers (fastai keeps such facts in a table).
# Values are module names whose *output* is the cut: the ReLU after fc6/fc7.
NAMED_CUTS: dict[str, dict[str, str]] = {
    "VGG": {"fc6": "classifier.1", "fc7": "classifier.4"},
    "AlexNet": {"fc6": "classifier.2", "fc7": "classifier.5"},
}
CUT_HELP: dict[str, str] = {
    "features": "the last feature map (forward_features), flattened",
    "pre_logits": "the vector the classifier reads (default)",
    "fc6": "output of the first fully-connected layer + ReLU (the 4,096-vector of Razavian et al.)",
    "fc7": "output of the second fully-connected layer + ReLU",
}


@dataclass
class Backbone:
    """A loaded network to transfer from (eval mode, CPU).

    `input_size` (C, H, W) and `mean`/`std` describe the inputs it was trained on; `mean`/`std` are None
    when unknown (weights files of non-ImageNet models), and the target data's own statistics are used.
    `weights_id` is a SHA-256 of the weights (keys, dtypes, shapes, bytes): the feature-cache key.
    """

    model: nn.Module
    name: str  # registered model name or spec text
    source: str  # "run DIR", "file PATH", "imagenet (torchvision …)", "random"
    input_size: tuple[int, int, int]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    weights_id: str
    fresh: Callable[[], nn.Module]  # the same architecture with new random weights (the scratch baseline)
    fixed_size: bool = True  # True when the head depends on H and W (flatten before fc): inputs must match
    interpolation: str = "bilinear"  # how inputs of another size are resized (timm's config: often bicubic)
    config: str = ""  # the pretrained config in words, when the weights come with one (timm)

    def __repr__(self) -> str:
        c, h, w = self.input_size
        return f"Backbone({self.name!r}, {self.source}, input {c}x{h}x{w}, weights {self.weights_id[:12]})"


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes and bytes), independent of device/layout."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CnnlabError(f"weights file not found: '{path}'; give a .pth state dict or .safetensors file")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        state = safe_torch_load(path)  # torch.load(weights_only=True): refuses code-running pickles, unrun
    except CnnlabError:
        raise
    except Exception as e:  # truncated or not a torch.save file at all: torch raises many kinds
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CnnlabError(f"cannot read weights '{path}' ({type(e).__name__}: {first}); the file is damaged or "
                          "not a torch.save state dict") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers around a state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CnnlabError(f"'{path}' does not hold a state dict (a mapping of names to tensors); "
                          "save one with torch.save(model.state_dict(), PATH)")
    return state


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Load `state` strictly; a classifier of another width is replaced to fit (e.g. 10 classes)."""
    state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}  # GoogLeNet's aux heads
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is not None and isinstance(head, nn.Linear):
        head_key = next((k[: -len(".weight")] for k, v in model.state_dict().items()
                         if k.endswith(".weight") and v is head.weight), None)
        w = state.get(f"{head_key}.weight") if head_key else None
        if w is not None and w.shape[0] != head.out_features:
            model.reset_classifier(int(w.shape[0]))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that do not fit: weights of another architecture or width
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip().startswith("size mismatch")]
        raise CnnlabError(f"weights {what} do not match the model: {lines[0] if lines else str(e)[:200]}"
                          f"{f' (and {len(lines) - 1} more)' if len(lines) > 1 else ''}; give weights saved from "
                          "this architecture") from None
    if result.missing_keys or result.unexpected_keys:
        raise CnnlabError(f"weights {what} do not match the model: missing {list(result.missing_keys)[:3]}, "
                          f"unexpected {list(result.unexpected_keys)[:3]}; give weights saved from this architecture")
    return model


def imagenet_url(name: str) -> str:
    """The URL of torchvision's published ImageNet weights for zoo model `name` (IMAGENET1K_V1)."""
    import torchvision  # noqa: PLC0415

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        raise CnnlabError(f"torchvision publishes no ImageNet weights for '{name}'; models with weights: "
                          "alexnet, vgg11..19(_bn), resnet18..152, googlenet") from None
    return enum["IMAGENET1K_V1"].url


def fetch_imagenet_state(name: str, url: str | None = None) -> dict[str, torch.Tensor]:
    """Download (or reuse from `$TORCH_HOME/hub/checkpoints`) torchvision's weights for `name`.

    Exactly torchvision's mechanism (`WeightsEnum.get_state_dict` calls the same function):
    `check_hash=True` compares the file's SHA-256 with the hex prefix in its name and refuses a mismatch,
    `weights_only=True` refuses pickles that would run code.
    """
    url = url or imagenet_url(name)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True,
                                                  weights_only=True)
    except RuntimeError as e:  # torch.hub raises RuntimeError for a hash mismatch
        raise CnnlabError(f"ImageNet weights for '{name}' from {url} failed verification: "
                          f"{str(e).splitlines()[0][:200]}") from None
    except OSError as e:  # URLError is an OSError: no network, refused connection, 404
        raise CnnlabError(f"cannot fetch ImageNet weights for '{name}' from {url}: {e}; with no network, download "
                          f"the file elsewhere and use --backbone {name}:PATH") from None


def load_backbone(text: str) -> Backbone:
    """A run directory, `NAME:PATH`, `NAME:imagenet`, or `NAME[:random]` -> `Backbone` (see module doc)."""
    text = str(text).strip()
    if Path(text).is_dir():
        model, card = load_model(open_run(text), "best")
        return Backbone(model.eval(), card.model, f"run {text}", tuple(card.input_size), tuple(card.mean),
                        tuple(card.std), weights_digest(model),
                        fresh=lambda: build_model(card.model, card.input_size, card.num_classes, card.model_options),
                        fixed_size=_head_depends_on_size(card.model))
    if is_timm_name(text):
        return _timm_backbone(text)
    name, _, where = text.partition(":")
    if not is_model_name(name):
        raise CnnlabError(f"unknown backbone '{text}': not a run directory, and '{name}' is no zoo model"
                          f"{did_you_mean(name, list_models())}; give RUN_DIR, NAME:PATH, NAME:imagenet or NAME")
    info = model_info(name)
    size = tuple(info.input_size)
    imagenet_like = size == (3, 224, 224)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet_like else (None, None)
    # torchvision's ported GoogLeNet weights expect [-1, 1] inputs: it turns transform_input on for them too
    options = {"transform_input": True} if where == "imagenet" and name == "googlenet" else {}
    model = create_model(name, **options).eval()
    if where in ("", "random"):
        source = "random"
    elif where == "imagenet":
        url = os.environ.get("CNNLAB_IMAGENET_URL") or imagenet_url(name)  # a mirror, for offline clusters
        model = _load_into(model, fetch_imagenet_state(name, url), f"from {url}")
        source = f"imagenet (torchvision, {Path(url).name})"
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        path = Path(where).expanduser()
        model = _load_into(model, _read_state_dict(path), f"'{path}'")
        source = f"file {path}"
    num_classes = model.num_classes
    return Backbone(model.eval(), name, source, size, mean, std, weights_digest(model),
                    fresh=lambda: create_model(name, num_classes=num_classes),
                    fixed_size=_head_depends_on_size(name))


def _timm_backbone(text: str) -> Backbone:
    """`timm:NAME` (random), `timm:NAME:pretrained` (timm's download) or `timm:NAME:PATH` (a weights file);
    input size, mean, std and interpolation from timm's pretrained config of the architecture."""
    name, where = split_timm_name(text)
    pretrained = where == "pretrained"
    model = create_timm_model(name, pretrained=pretrained).eval()
    if pretrained:
        source = "pretrained (timm" + (f", {os.environ['CNNLAB_TIMM_URL']})" if os.environ.get("CNNLAB_TIMM_URL") else ")")
    elif where in ("", "random"):
        source = "random"
    else:
        path = Path(where).expanduser()
        model = _load_into(model, _read_state_dict(path), f"'{path}'")
        source = f"file {path}"
    cfg = pretrained_config(model)
    num_classes = model.num_classes
    return Backbone(model, f"timm:{name}", source, tuple(int(v) for v in cfg["input_size"]), tuple(cfg["mean"]),
                    tuple(cfg["std"]), weights_digest(model),
                    fresh=lambda: create_timm_model(name, num_classes=num_classes), fixed_size=False,
                    interpolation=str(cfg.get("interpolation") or "bilinear"), config=describe_config(cfg))


def _head_depends_on_size(name: str) -> bool:
    """Specs and the small zoo nets flatten a map whose size depends on H and W; the ImageNet nets pool
    adaptively and take other sizes (we still resize to the size they were trained at by default)."""
    if not is_model_name(name):
        return True
    return tuple(model_info(name).input_size) != (3, 224, 224)


# ---- cut points ---------------------------------------------------------------------------------
def cut_points(model: nn.Module) -> dict[str, str]:
    """Ordered `{cut name: what it is}`: stages, `features`, named fc cuts, `pre_logits` (the default)."""
    cuts: dict[str, str] = {}
    for stage in getattr(model, "feature_info", []) or []:
        cuts[stage["name"]] = f"stage output, {stage['channels']} channels, stride {stage['stride']}"
    cuts["features"] = CUT_HELP["features"]
    for alias, module_name in NAMED_CUTS.get(type(model).__name__, {}).items():
        cuts[alias] = f"{CUT_HELP[alias]} = module '{module_name}'"
    cuts["pre_logits"] = CUT_HELP["pre_logits"]
    return cuts


def check_layer(model: nn.Module, layer: str) -> str:
    """`layer` if it is a cut point or a module name of `model`; else a did-you-mean error listing cuts."""
    cuts = cut_points(model)
    modules = {n for n, _ in model.named_modules() if n}
    if layer in cuts or layer in modules:
        return layer
    raise CnnlabError(f"unknown layer '{layer}' for {type(model).__name__}{did_you_mean(layer, [*cuts, *modules])}; "
                      f"cut points: {', '.join(cuts)} (any module name from `cnnlab summary` also works)")


class _Stop(Exception):
    """Raised by the capture hook: nothing after the cut needs to run."""


class Truncated(nn.Module):
    """`model` cut after `layer`: `(N, C, H, W)` images -> `(N, D)` flattened activations of the cut.

    `pre_logits` and `features` use the model's own handles; any other name captures that module's
    output with a forward hook and stops the forward pass there (so layers after the cut cost nothing).
    `pool="avg"` global-average-pools a 4-D cut to `(N, C)` first (used for large early-stage maps).
    """

    def __init__(self, model: nn.Module, layer: str = "pre_logits", pool: str = "flatten"):
        super().__init__()
        if pool not in ("flatten", "avg"):
            raise CnnlabError(f"unknown pooling '{pool}'; choose flatten or avg")
        self.layer = check_layer(model, layer)
        self.pool = pool
        self.model = model
        self._module_name = NAMED_CUTS.get(type(model).__name__, {}).get(layer, layer)
        stages = [f.get("module") for f in getattr(model, "feature_info", None) or [] if isinstance(f, dict)]
        timm_like = hasattr(model, "forward_intermediates") and layer in stages  # timm's stage dicts carry "module"
        self._timm_stage = stages.index(layer) if timm_like else None

    @property
    def observed(self) -> tuple[str, ...]:
        """The module a forward hook reads (`cnnlab.fuse` leaves it unfused), as a name in this module."""
        return () if self.layer in ("pre_logits", "features") else (f"model.{self._module_name}",)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer == "pre_logits":
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        if self.layer == "features":
            return self.model.forward_features(x)
        stage = self._timm_stage
        if stage is not None:  # timm: the stage through its own forward_intermediates (stops after it)
            return intermediate(self.model, x, stage)
        target = self.model.get_submodule(self._module_name)
        box: list[torch.Tensor] = []

        def capture(module, args, output):
            box.append(output)
            raise _Stop

        handle = target.register_forward_hook(capture)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not box:
            raise CnnlabError(f"layer '{self.layer}' was not reached by the forward pass")
        return box[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._run(x)
        if self.pool == "avg" and y.ndim == 4:
            y = y.mean(dim=(2, 3))  # (N, C)
        return y.flatten(1)  # (N, D)


def cut(backbone: Backbone, layer: str = "pre_logits", pool: str = "flatten") -> Truncated:
    """A deep copy of the backbone's model cut after `layer` (the backbone itself is left untouched)."""
    return Truncated(copy.deepcopy(backbone.model), layer, pool)
