"""MixUp and CutMix on a batch, with a λ (and a CutMix box) drawn per sample, and soft targets.

torchvision's v2 MixUp / CutMix draw one λ and one box per call, i.e. per batch; here every sample
draws its own. Each sample i is mixed with a partner, by default the sample before it in the batch
(i - 1, the first with the last: torchvision's `roll(1)` pairing; the batch is shuffled), as
torchvision mixes it:

    mixup   x'_i = λ_i x_i + (1 - λ_i) x_partner,            λ_i ~ Beta(α, α)
    cutmix  x'_i = x_i with a box of x_partner pasted in,    λ_i ~ Beta(α, α); box centre uniform,
            sides H sqrt(1 - λ_i), W sqrt(1 - λ_i) clipped to the image; λ_i is then
            corrected to 1 - box area / image area
    target  y'_i = λ_i onehot(y_i) + (1 - λ_i) onehot(y_partner)

The soft targets go through the loss as class probabilities (`TrainStep` takes them), so label
smoothing applies to the mixed target: (1 - ε) y'_i + ε / K, as torch's cross_entropy does.

The `--mix` grammar:

    MIX    := "none" | ITEM ("," ITEM)*
    ITEM   := METHOD [":" ALPHA] [":p=" P]          METHOD := "mixup" | "cutmix"

ALPHA > 0 is the Beta(α, α) parameter (default 1). Each sample draws ONE method (or none): method k
with probability P_k. Items without p share equally what the given p's leave of 1, so:

    mixup:0.2                      every sample mixed up, λ ~ Beta(0.2, 0.2)
    cutmix:1.0                     every sample cut-mixed, λ ~ Beta(1, 1)
    mixup:0.2,cutmix:1.0           each sample: mixup or cutmix, half and half (timm's default switch)
    mixup:0.2,cutmix:1.0:p=0.5     cutmix with probability 0.5, mixup with the other 0.5
    cutmix:1.0:p=0.5               half the samples cut-mixed, the other half left as they are
    mixup:0.2:p=0.3,cutmix:p=0.3   30% mixup, 30% cutmix, 40% unmixed

The p's must add up to at most 1. `str(mix)` is the canonical form, every p explicit.

Train accuracy with mixing counts a prediction as right when it is the dominant class of the mixed
target: the class with the largest weight (the sample's own label when λ_i > 1/2, the partner's when
λ_i < 1/2; at exactly 1/2 the lower class index). Evaluation is never mixed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlab.augment._base import Params, _rand, _randint, format_number
from cnnlab.errors import CnnlabError, did_you_mean

METHODS = ("mixup", "cutmix")
NONE, MIXUP, CUTMIX = 0, 1, 2  # the "method" parameter per sample
GRAMMAR = "METHOD[:ALPHA][:p=P],... with METHOD mixup or cutmix, e.g. mixup:0.2, cutmix:1.0, mixup:0.2,cutmix:1.0:p=0.5"


@dataclass(frozen=True)
class MixMethod:
    """One item of a mix: `name` ("mixup" or "cutmix"), Beta(alpha, alpha), probability p (None: a share
    of what the other items leave)."""

    name: str
    alpha: float = 1.0
    p: float | None = None

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise CnnlabError(f"--mix: unknown method {self.name!r}{did_you_mean(self.name, METHODS)}; {GRAMMAR}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise CnnlabError(f"--mix: {self.name} alpha={self.alpha} must be a number > 0 (the Beta(alpha, alpha) "
                              f"parameter, e.g. {self.name}:{'0.2' if self.name == 'mixup' else '1.0'})")
        if self.p is not None and not (math.isfinite(self.p) and 0.0 <= self.p <= 1.0):
            raise CnnlabError(f"--mix: {self.name} p={self.p} must be a probability in [0, 1] (e.g. {self.name}:1.0:p=0.5)")


class Mix:
    """Per-sample MixUp / CutMix: `mix(x, labels, generator, num_classes) -> (mixed x, soft targets)`.

    Like the augmentation ops it splits into `sample` (the draws: method, λ, box, partner per sample)
    and deterministic `apply` (images) and `targets` (labels) for tests and previews."""

    def __init__(self, methods: Sequence[MixMethod]):
        names = [m.name for m in methods]
        for name in set(names):
            if names.count(name) > 1:
                raise CnnlabError(f"--mix: {name} given twice; give each method once ({GRAMMAR})")
        given = sum(m.p for m in methods if m.p is not None)
        if given > 1.0 + 1e-9:
            raise CnnlabError(f"--mix: the probabilities p add up to {format_number(round(given, 9))} > 1; "
                              f"each sample draws one method, so they must add up to at most 1")
        free = [m for m in methods if m.p is None]
        share = round((1.0 - given) / len(free), 12) if free else 0.0  # 1 - 0.8 is 0.2, as written
        self.methods = tuple(MixMethod(m.name, float(m.alpha), share if m.p is None else float(m.p)) for m in methods)

    def probability(self, name: str) -> float:
        return sum(m.p for m in self.methods if m.name == name)  # type: ignore[misc]

    def alpha(self, name: str) -> float:
        return next((m.alpha for m in self.methods if m.name == name), 1.0)

    # ---- draws --------------------------------------------------------------------------------
    def sample(self, shape: Sequence[int], generator: torch.Generator | None = None, device="cpu",
               partner: Tensor | None = None) -> Params:
        """Per sample (N,): "method" (0 none, 1 mixup, 2 cutmix), "lam" (float64, the weight of the
        sample's own label), the CutMix box "top", "left", "bottom", "right" (pixels, bottom/right
        exclusive; empty for the others) drawn about the centre "cy", "cx", "beta" (the Beta draw, λ
        before CutMix's correction) and "partner" (the index of the sample mixed in)."""
        n, _, h, w = shape
        device = torch.device(device)
        u = _rand(3, n, generator, device)
        p_mixup, p_cutmix = self.probability("mixup"), self.probability("cutmix")
        method = torch.where(u[0] < p_mixup, MIXUP, torch.where(u[0] < p_mixup + p_cutmix, CUTMIX, NONE))
        # Beta draws: torch has none that takes a generator, so numpy's, seeded from the generator
        if generator is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        rng = np.random.default_rng(seed)
        lam_mixup = torch.from_numpy(rng.beta(self.alpha("mixup"), self.alpha("mixup"), n)).to(device)
        lam_cut = torch.from_numpy(rng.beta(self.alpha("cutmix"), self.alpha("cutmix"), n)).to(device)
        # torchvision's CutMix box: centre (r_x, r_y) uniform; half sides int(0.5 sqrt(1 - λ) W), clipped
        r = 0.5 * torch.sqrt(1.0 - lam_cut)
        rx, ry = _randint(u[1], w - 1), _randint(u[2], h - 1)
        half_w, half_h = torch.floor(r * w).long(), torch.floor(r * h).long()
        cut = method == CUTMIX
        left = torch.where(cut, (rx - half_w).clamp(min=0), 0)
        right = torch.where(cut, (rx + half_w).clamp(max=w), 0)
        top = torch.where(cut, (ry - half_h).clamp(min=0), 0)
        bottom = torch.where(cut, (ry + half_h).clamp(max=h), 0)
        lam_box = 1.0 - ((right - left) * (bottom - top)).double() / (w * h)
        lam = torch.where(method == MIXUP, lam_mixup, torch.where(cut, lam_box, 1.0))
        if partner is None:
            partner = (torch.arange(n, device=device) - 1) % n  # torchvision's roll(1): i mixes with i - 1
        return {"method": method, "lam": lam, "top": top, "left": left, "bottom": bottom, "right": right,
                "cy": ry, "cx": rx, "beta": torch.where(cut, lam_cut, lam), "partner": partner.to(device)}

    # ---- deterministic parts ------------------------------------------------------------------
    @staticmethod
    def box_mask(params: Params, h: int, w: int) -> Tensor:
        """(N, 1, H, W) bool: the pixels taken from the partner (the CutMix box)."""
        i = torch.arange(h, device=params["top"].device).view(1, h, 1)
        j = torch.arange(w, device=params["top"].device).view(1, 1, w)
        inside = ((i >= params["top"].view(-1, 1, 1)) & (i < params["bottom"].view(-1, 1, 1))
                  & (j >= params["left"].view(-1, 1, 1)) & (j < params["right"].view(-1, 1, 1)))
        return inside.unsqueeze(1)

    @staticmethod
    def apply(x: Tensor, params: Params) -> Tensor:
        """The mixed batch (a new tensor in x's dtype and memory layout): mixup blends, cutmix boxes.
        Unmixed and cut-mixed samples keep their own pixels outside the box exactly."""
        xp = x[params["partner"]]
        blend = params["method"] == MIXUP
        lam = torch.where(blend, params["lam"], 1.0)
        # torchvision's order of operations: x_partner * (1 - λ) + x * λ, the weights rounded to x's dtype
        own = lam.to(x.dtype).view(-1, 1, 1, 1)
        other = (1.0 - lam).to(x.dtype).view(-1, 1, 1, 1)
        y = torch.where(Mix.box_mask(params, x.shape[2], x.shape[3]), xp, xp * other + x * own)
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        return y

    @staticmethod
    def targets(labels: Tensor, params: Params, num_classes: int) -> Tensor:
        """(N, K) float32 class probabilities: λ onehot(own) + (1 - λ) onehot(partner)."""
        onehot = F.one_hot(labels.long(), num_classes).float()
        lam = params["lam"].to(labels.device)
        own = lam.float().view(-1, 1)
        other = (1.0 - lam).float().view(-1, 1)
        return onehot[params["partner"].to(labels.device)] * other + onehot * own

    def __call__(self, x: Tensor, labels: Tensor, generator: torch.Generator | None = None,
                 num_classes: int | None = None, partner: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (N, C, H, W) float (before or after normalisation: mixing is linear), labels int (N,) ->
        (mixed x, soft targets (N, num_classes) float32)."""
        if x.dim() != 4 or labels.dim() != 1 or len(labels) != len(x):
            raise CnnlabError(f"mixing needs images (N, C, H, W) and labels (N,), got {tuple(x.shape)} and {tuple(labels.shape)}")
        k = int(num_classes) if num_classes is not None else int(labels.max()) + 1
        params = self.sample(x.shape, generator, x.device, partner)
        return self.apply(x, params), self.targets(labels, params, k)

    def __str__(self) -> str:
        return ",".join(f"{m.name}:{format_number(m.alpha)}:p={format_number(round(m.p, 12))}" for m in self.methods)

    def __repr__(self) -> str:
        return f"Mix({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mix) and self.methods == other.methods

    def __hash__(self) -> int:
        return hash(self.methods)


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CnnlabError(f"--mix: {what}={text!r} is not a number; {GRAMMAR}") from None


def parse_mix(text: str | Mix | None) -> Mix | None:
    """A `Mix` from its string (see the module docstring); None for "", "none" or None.
    Raises CnnlabError (one line) naming what is wrong."""
    if text is None or isinstance(text, Mix):
        return text
    if not isinstance(text, str):
        raise CnnlabError(f"--mix must be a string like 'mixup:0.2', got {type(text).__name__}")
    if text.strip().lower() in ("", "none"):
        return None
    methods = []
    for item in text.split(","):
        name, *args = [part.strip() for part in item.strip().split(":")]
        name = name.lower()
        if not name:
            raise CnnlabError(f"--mix: empty item in {text!r}; {GRAMMAR}")
        if name not in METHODS:
            raise CnnlabError(f"--mix: unknown method {name!r}{did_you_mean(name, METHODS)}; {GRAMMAR}")
        kwargs: dict[str, float] = {}
        for i, arg in enumerate(args):
            key, sep, value = arg.partition("=")
            key = key.strip().lower() if sep else "alpha"
            if not sep and i > 0:
                raise CnnlabError(f"--mix: {name}: value {arg!r} needs a name (alpha=... or p=...); {GRAMMAR}")
            if key not in ("alpha", "p"):
                raise CnnlabError(f"--mix: {name}: unknown parameter {key!r}{did_you_mean(key, ('alpha', 'p'))}; "
                                  f"{name} takes alpha, p")
            if key in kwargs:
                raise CnnlabError(f"--mix: {name}: {key} given twice in {item.strip()!r}")
            kwargs[key] = _number(value if sep else arg, f"{name} {key}")
        methods.append(MixMethod(name, **kwargs))
    return Mix(methods)
