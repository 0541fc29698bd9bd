"""Temperature scaling (Guo et al., 2017): make a trained run's probabilities mean what they say.

A network trained with cross-entropy is usually over-confident: among the test images it gives 90%,
fewer than 90% are right. Temperature scaling divides the log-probabilities by one number T fitted on
held-out images, `p_T = softmax(log p / T)` (for one view `softmax(z / T)` of the logits z): T > 1
softens, T < 1 sharpens. Dividing by a positive number keeps the order of the classes, so the top-1
prediction and hence the accuracy cannot change.

T is fitted on the run's **validation** split, rebuilt exactly as training built it (the same dataset,
`val_fraction` and `seed` from config.json; the training mean/std recomputed and compared with the
card's as a check). The test split is only measured, before and after. A run trained without a
validation split is refused: its every training image shaped the weights (a temperature fitted on them
comes out too low, the net being surest on what it memorised), and fitting on the test split would make
the after-figures meaningless. Retrain with `--val-fraction 0.1`.

The fit minimises the validation negative log-likelihood over log T with a golden-section search on
[log 0.05, log 20]. The NLL is convex in 1/T (a log-sum-exp of a linear function plus a linear term),
hence unimodal in log T, so the bounded search needs no start value or learning rate and cannot
diverge; 100 steps narrow the interval to 1e-20 of its width.

Measures, on the test split, of probabilities `p` `(N, K)` and labels `y` `(N,)`:
- NLL: mean of `-log p[y]` (nats per image).
- Brier score: mean over images of `sum_k (p_k - [k == y])^2`, the multi-class form of Brier (1950),
  in [0, 2].
- ECE (expected calibration error, Naeini et al. 2015; Guo et al. 2017): the top-1 confidences go into
  15 equal-width bins `((b-1)/15, b/15]`; ECE = `sum_b n_b / N * |accuracy_b - mean confidence_b|`.

The run folder gains `reliability.png` (accuracy per confidence bin against the diagonal, and the
histogram of confidences, before and after) and `calibration.json` (the figures); the temperature goes
into the model card (`best.json` or `last.json`), which `cnnlab predict`, `eval`, `export`, `serve` and
`report` read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.core.figures import save_figure, subplots
from cnnlab.core.files import atomic_write_json
from cnnlab.core.preprocess import Preprocess
from cnnlab.core.run import open_run
from cnnlab.errors import CnnlabError
from cnnlab.training.run import load_model
from cnnlab.training.rundata import describe_val, run_data
from cnnlab.training.tta import check_tta, tta_log_probs

BINS = 15  # equal-width confidence bins of the ECE and the reliability diagram (Guo et al., 2017)
T_LOW, T_HIGH = 0.05, 20.0  # the search interval of the temperature
SEARCH_STEPS = 100
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


# ---- measures ------------------------------------------------------------------------------------------
def temper(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """`(N, K)` log-probabilities -> `log_softmax(log_probs / T)`; the argmax of every row is unchanged."""
    return log_probs if temperature == 1.0 else (log_probs / temperature).log_softmax(1)


def nll(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-probability of the true class, in nats per image."""
    return float(-log_probs.double().gather(1, labels.view(-1, 1)).mean())


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over images of `sum_k (p_k - onehot_k)^2`, in [0, 2]."""
    onehot = torch.zeros_like(probs, dtype=torch.float64).scatter_(1, labels.view(-1, 1), 1.0)
    return float(((probs.double() - onehot) ** 2).sum(1).mean())


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> dict[str, list]:
    """Per equal-width bin `((b-1)/bins, b/bins]` of the top-1 confidence: image count, mean confidence and
    accuracy (None where a bin is empty)."""
    conf, pred = probs.double().max(1)
    correct = (pred == labels).double()
    index = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)  # conf in (0, 1]: bin b holds ((b-1)/n, b/n]
    counts = torch.bincount(index, minlength=bins)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, conf)
    right = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    return {"count": counts.tolist(),
            "confidence": [float(s / n) if n else None for s, n in zip(conf_sum, counts.tolist(), strict=True)],
            "accuracy": [float(r / n) if n else None for r, n in zip(right, counts.tolist(), strict=True)]}


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """Expected calibration error over `bins` equal-width bins of the top-1 confidence, in [0, 1]."""
    b = reliability_bins(probs, labels, bins)
    n = sum(b["count"])
    return sum(c / n * abs(a - m) for c, a, m in zip(b["count"], b["accuracy"], b["confidence"], strict=True) if c)


def measures(log_probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> dict[str, float]:
    """accuracy, nll, brier and ece of `(N, K)` log-probabilities against labels `(N,)`."""
    probs = log_probs.double().exp()
    return {"accuracy": float((log_probs.argmax(1) == labels).double().mean()), "nll": nll(log_probs, labels),
            "brier": brier(probs, labels), "ece": ece(probs, labels, bins)}


# ---- the fit -------------------------------------------------------------------------------------------
def fit_temperature(log_probs: torch.Tensor, labels: torch.Tensor, low: float = T_LOW, high: float = T_HIGH,
                    steps: int = SEARCH_STEPS) -> float:
    """The T in [low, high] minimising `nll(temper(log_probs, T), labels)`: golden-section search on log T
    (the NLL is unimodal there; see the module docstring). `log_probs` `(N, K)`, `labels` `(N,)` int64."""
    if len(labels) == 0:
        raise CnnlabError("cannot fit a temperature on 0 images")
    lp = log_probs.detach().double().cpu()
    y = labels.detach().cpu().view(-1, 1)

    def f(u: float) -> float:
        value = float(-(lp / math.exp(u)).log_softmax(1).gather(1, y).mean())
        return value if math.isfinite(value) else math.inf

    a, b = math.log(low), math.log(high)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    best = min(((fc, c), (fd, d), (f(math.log(low)), math.log(low)), (f(math.log(high)), math.log(high))))
    return math.exp(best[1])


# ---- a run ---------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """What `calibrate` measured and wrote."""

    run: Path
    which: str
    temperature: float
    tta: str
    val_images: int
    test_images: int
    before: dict[str, float]  # test split: accuracy, nll, brier, ece
    after: dict[str, float]
    val_nll: tuple[float, float]  # validation NLL before and after (what the fit minimised)
    split: str  # how the validation split was rebuilt
    bins: dict[str, Any] = field(default_factory=dict)  # reliability_bins before / after (test)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run"], d["files"] = str(self.run), [str(p) for p in self.files]
        return d

    def __str__(self) -> str:
        rows = [("accuracy", "accuracy", "{:.2%}"), ("NLL (nats/image)", "nll", "{:.4f}"),
                ("Brier score", "brier", "{:.4f}"), (f"ECE ({BINS} bins)", "ece", "{:.4f}")]
        lines = [f"validation split: {self.split}",
                 f"temperature T = {self.temperature:.4f} (fitted on {self.val_images:,} validation images; "
                 f"validation NLL {self.val_nll[0]:.4f} -> {self.val_nll[1]:.4f}; tta {self.tta})",
                 f"test split ({self.test_images:,} images)   before      after"]
        lines += [f"  {name:<22} {fmt.format(self.before[k]):>9} {fmt.format(self.after[k]):>10}" for name, k, fmt in rows]
        lines += [f"note: {n}" for n in self.notes]
        lines.append("wrote " + ", ".join(str(p) for p in self.files))
        return "\n".join(lines)


def _log_probs(model, card, split, tta: str, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Uncalibrated log-probabilities `(N, K)` float64 and labels `(N,)` of a split, fp32 on the CPU."""
    prep = Preprocess(card.mean, card.std, "cpu", channels_last=False)
    out, labels = [], []
    with torch.inference_mode():
        for images, y in split.batches(batch_size, shuffle=False):
            out.append(tta_log_probs(model, images, prep, tta).double())
            labels.append(y)
    if not out:
        raise CnnlabError("cannot calibrate on an empty split (0 images)")
    return torch.cat(out), torch.cat(labels)


def calibrate(run: str | Path, *, which: str = "best", data_dir: str | Path | None = None) -> Calibration:
    """Fit the temperature of `run`'s `which` weights on its validation split, measure the test split before
    and after, write `reliability.png` and `calibration.json` and store T in `which.json` (module docstring)."""
    if which not in ("best", "last"):
        raise CnnlabError(f"weights must be 'best' or 'last', got {which!r}")
    run_dir = open_run(run)
    card = run_dir.card(which)
    cfg = run_dir.read_config().get("config", {}) if run_dir.exists() else {}
    tta = check_tta(cfg.get("tta", "none") or "none")
    ds = run_data(run_dir, card, data_dir=data_dir)
    if ds.val is None or len(ds.val) == 0:
        raise CnnlabError(f"run '{run_dir.path}' was trained without a validation split (val_fraction "
                          f"{cfg.get('val_fraction')}): a temperature must be fitted on images the weights never "
                          "saw, and never on the test split; retrain with --val-fraction 0.1, then calibrate")
    model, card = load_model(run_dir, which)
    model = model.float().eval()
    val_lp, val_y = _log_probs(model, card, ds.val, tta)
    test_lp, test_y = _log_probs(model, card, ds.test, tta)
    t = fit_temperature(val_lp, val_y)
    notes = []
    if t < T_LOW * 1.01 or t > T_HIGH / 1.01:
        notes.append(f"the temperature reached the end of the search interval [{T_LOW}, {T_HIGH}]; the "
                     "validation split may be too small or the model degenerate")
    after_lp = temper(test_lp, t)
    source = describe_val(run_dir)
    result = Calibration(
        run_dir.path, which, t, tta, len(val_y), len(test_y), measures(test_lp, test_y), measures(after_lp, test_y),
        (nll(val_lp, val_y), nll(temper(val_lp, t), val_y)), f"{len(val_y):,} images of {card.dataset} "
        f"({source}, as training held them out)",
        {"before": reliability_bins(test_lp.exp(), test_y), "after": reliability_bins(after_lp.exp(), test_y)},
        notes=notes)
    figure = run_dir.path / ("reliability.png" if which == "best" else f"reliability-{which}.png")
    report = run_dir.path / ("calibration.json" if which == "best" else f"calibration-{which}.json")
    plot_reliability(result.bins["before"], result.bins["after"], figure, scores=(result.before, result.after),
                     title=f"{card.model} on {card.dataset}, {which} weights, test split ({len(test_y):,} images)",
                     temperature=t)
    result.files = [figure, report, run_dir.path / f"{which}.json"]
    atomic_write_json(report, result.to_dict())
    card.temperature = t
    atomic_write_json(run_dir.path / f"{which}.json", card.to_dict())  # last: the card names finished figures
    return result


def plot_reliability(before: dict, after: dict, path: str | Path, *, scores: tuple[dict, dict] | None = None,
                     title: str = "", temperature: float = 1.0) -> None:
    """Reliability diagrams (accuracy per confidence bin against the diagonal, the gap to the mean confidence in red) above the
    histograms of the top-1 confidence, uncalibrated on the left, calibrated on the right. `before`/`after`:
    `reliability_bins`; `scores`: `measures` before and after, shown in the titles."""
    measured = {"before": scores[0] if scores else None, "after": scores[1] if scores else None}
    fig, axes = subplots(2, 2, figsize=(9, 6.4), gridspec_kw={"height_ratios": [3, 1.3]}, sharex=True)
    for col, (name, b) in enumerate((("before", before), ("after", after))):
        n = len(b["count"])
        width = 1.0 / n
        lefts = np.arange(n) * width
        acc = np.array([a if a is not None else 0.0 for a in b["accuracy"]])
        conf = np.array([c if c is not None else (i + 0.5) * width for i, c in enumerate(b["confidence"])])
        filled = np.array(b["count"]) > 0
        ax = axes[0, col]
        ax.bar(lefts[filled], acc[filled], width=width, align="edge", color="#3b6fc4", edgecolor="white",
               label="accuracy in the bin")
        centres = lefts[filled] + width / 2
        ax.vlines(centres, acc[filled], conf[filled], color="#c0392b", lw=2.5, label="gap to mean confidence")
        ax.scatter(centres, conf[filled], marker="_", s=160, color="#c0392b", zorder=3)
        ax.plot([0, 1], [0, 1], "--", color="#555", lw=1, label="perfect calibration")
        m = measured[name] or {}
        label = "uncalibrated" if name == "before" else f"temperature T = {temperature:.3f}"
        extra = f"\nECE {m['ece']:.4f}, NLL {m['nll']:.4f}" if m else ""
        ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{label}{extra}")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
        hist = axes[1, col]
        hist.bar(lefts, b["count"], width=width, align="edge", color="#7f8fa6", edgecolor="white")
        hist.set(xlabel="top-1 confidence", ylabel="images")
        hist.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
