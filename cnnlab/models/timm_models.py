"""Modern pretrained ConvNets through timm: `timm:NAME` wherever cnnlab takes a model.

    cnnlab summary timm:convnext_atto --input 3x224x224
    cnnlab train --model timm:mobilenetv3_small_100 --data digits ...
    cnnlab transfer --backbone timm:mobilenetv3_small_100:weights.safetensors --data digits

timm (https://github.com/huggingface/pytorch-image-models) is an optional dependency
(`pip install 'cnnlab[timm]'`), imported only when a `timm:` name is used. Its models already follow
the conventions of cnnlab's zoo (`forward_features`, `forward_head(pre_logits=True)`,
`get_classifier`, `reset_classifier`); this adapter adds cnnlab's keys to each stage of timm's
`feature_info` (`name` = timm's `module`, `channels` = `num_chs`, `stride` = `reduction`), keeping
timm's own keys, so summaries, cut points and per-stage learning rates need no special case.

Weights: random (`timm:NAME`), a file (`timm:NAME:PATH`, read by `cnnlab.transfer_learning`), or timm's
own download (`timm:NAME:pretrained`: the Hugging Face hub, or the URL in `$CNNLAB_TIMM_URL`, a mirror;
`{name}` in it is replaced by the model name). timm reads downloads with `torch.load(weights_only=True)`
or safetensors.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from torch import nn

from cnnlab.errors import CnnlabError

PREFIX = "timm:"


def is_timm_name(text: object) -> bool:
    """True for `timm:NAME` (with or without a `:WEIGHTS` part)."""
    return isinstance(text, str) and text.strip().startswith(PREFIX)


def split_timm_name(text: str) -> tuple[str, str]:
    """`timm:NAME[:WEIGHTS]` -> (NAME, WEIGHTS or "")."""
    name, _, where = text.strip()[len(PREFIX):].partition(":")
    if not name:
        raise CnnlabError(f"'{text}' names no timm model; write timm:NAME, e.g. timm:convnext_atto")
    return name, where


def _timm():
    try:
        import timm  # noqa: PLC0415 - optional and heavy: only when a timm: name is used
    except ImportError:
        raise CnnlabError("timm is not installed; `pip install 'cnnlab[timm]'` (or `pip install timm`) "
                          "to use timm:NAME models") from None
    return timm


def check_timm_name(name: str) -> None:
    """A `CnnlabError` naming close timm models when `name` is not one of timm's architectures."""
    timm = _timm()
    if timm.is_model(name):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise CnnlabError(f"unknown timm model '{name}'{hint}; `python -c \"import timm; print(timm.list_models('*{name[:6]}*'))\"` "
                      f"lists timm's {len(names):,} architectures")


def pretrained_config(model: nn.Module) -> dict[str, Any]:
    """timm's data config of `model`: input_size (C, H, W), interpolation, mean, std, crop_pct, crop_mode."""
    return dict(_timm().data.resolve_data_config({}, model=model))


def describe_config(cfg: dict[str, Any]) -> str:
    c, h, w = cfg["input_size"]
    mean = "/".join(f"{v:.3f}" for v in cfg["mean"])
    std = "/".join(f"{v:.3f}" for v in cfg["std"])
    return (f"timm pretrained config: input {c}x{h}x{w}, {cfg['interpolation']} interpolation, mean {mean}, "
            f"std {std}, crop_pct {cfg.get('crop_pct')}")


def _cnnlab_conventions(model: nn.Module) -> nn.Module:
    for stage in getattr(model, "feature_info", None) or []:
        stage.setdefault("name", stage["module"])
        stage.setdefault("channels", stage["num_chs"])
        stage.setdefault("stride", stage["reduction"])
    return model


def create_timm_model(name: str, *, num_classes: int | None = None, in_channels: int | None = None,
                      pretrained: bool = False, **options: Any) -> nn.Module:
    """timm's `create_model(name, ...)` with cnnlab's stage keys; `pretrained=True` downloads timm's weights
    (a failed download is one `CnnlabError` line). `dropout` is timm's `drop_rate`."""
    timm = _timm()
    check_timm_name(name)
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    if in_channels is not None:
        kwargs["in_chans"] = int(in_channels)
    if "dropout" in options:
        kwargs["drop_rate"] = float(options.pop("dropout"))
    kwargs.update(options)
    if pretrained:
        url = os.environ.get("CNNLAB_TIMM_URL")
        if url:  # a mirror: timm's own loader (torch.hub, weights_only=True) from that URL, not the hub
            kwargs["pretrained_cfg_overlay"] = {"url": url.replace("{name}", name), "hf_hub_id": None}
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:  # an option the architecture does not take
        raise CnnlabError(f"timm model '{name}' does not take options {sorted(options)}: {str(e)[:160]}") from None
    except (OSError, RuntimeError, ValueError) as e:  # no network, 404, a damaged or mismatched download
        if not pretrained:
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CnnlabError(f"cannot get timm's pretrained weights for '{name}': {first}; with no network, save the "
                          f"weights elsewhere and use timm:{name}:PATH (a .safetensors or .pth file)") from None
    except Exception as e:  # huggingface_hub's own errors (offline mode, gated repos) share no base class
        if not pretrained:
            raise
        raise CnnlabError(f"cannot get timm's pretrained weights for '{name}': {type(e).__name__}: "
                          f"{str(e).strip()[:160]}; use timm:{name}:PATH with a local file") from None
    return _cnnlab_conventions(model)


def timm_input_size(name: str) -> tuple[int, int, int]:
    """The input size (C, H, W) of timm's pretrained config for `name`, without building the model."""
    timm = _timm()
    check_timm_name(name)
    cfg = timm.models.get_pretrained_cfg(name) if hasattr(timm.models, "get_pretrained_cfg") else None
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return tuple(int(v) for v in size) if size else (3, 224, 224)


def intermediate(model: nn.Module, x, stage: int):
    """The output of stage `stage` (an index into `feature_info`) through timm's `forward_intermediates`,
    stopping after it."""
    out = model.forward_intermediates(x, indices=[stage], intermediates_only=True, stop_early=True)
    return out[0]
