"""`TrainConfig`: every option of a training run, with its unit and why it defaults to what it does.

The model's own configuration (its architecture) lives with the model; this is how it is trained.
Options are resolved in layers, later ones winning: the defaults here < a named recipe < a config file
< options given explicitly (CLI flags or keyword arguments). The resolved config is saved as
`config.json` in the run directory, so a run can be reproduced from it alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.augment.mixing import parse_mix
from cnnlab.data.subsets import check_folds
from cnnlab.errors import CnnlabError, did_you_mean

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the `tomli` package
    import tomli as tomllib

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "step", "constant", "plateau")  # plateau: cnnlab.training.stopping
MONITORS = ("val_loss", "val_accuracy")  # what --early-stop and the plateau schedule watch
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TTA_MODES = ("none", "flip", "shift", "flip-shift")  # test-time augmentation (cnnlab.training.tta)
DEVICES = ("auto", "cpu", "cuda")
CLASS_WEIGHTS = ("none", "auto")  # auto: inverse class frequency (cnnlab.data.sampling.class_weights)
SAMPLERS = ("shuffle", "balanced")  # balanced: every class equally often per epoch (cnnlab.data.sampling)
LOGGERS = ("csv", "tensorboard")  # --log, comma-separated (cnnlab.training.logging_callbacks)

# Upper bounds, so that one option cannot ask for terabytes or a run that never ends (stated in the errors).
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 16  # images in one batch: 65,536 ImageNet images are already 39 GB of fp32 input
MAX_IMAGE_SIDE = 4096  # pixels; ImageNet models take 224
MAX_CHECKPOINTS = 1000
MAX_STEPS = 1 << 40  # --checkpoint-every

# What a run on a large training set gets by default; a small one gets more (cnnlab.training.defaults).
DEFAULT_EPOCHS = 10
DEFAULT_BATCH = 128
# Learning rates that work out of the box: Adam-family steps are normalised per parameter, SGD's are not.
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
# AdamW decouples weight decay from the gradient, so it wants a larger value than SGD's L2 penalty.
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adam": 0.0, "adamw": 0.05}


@dataclass
class TrainConfig:
    """How to train one model on one dataset. `None` means "resolved from other options"."""

    model: str = "simple_cnn"  # a registered name (`cnnlab models`) or a spec in the lecture's notation
    data: str = "fashion-mnist"  # a dataset name (`cnnlab data list`)
    data_dir: str | None = None  # where the dataset's files are; None: the data module's search path
    image_size: int | None = None  # resize the dataset's images to this side (pixels); None: as stored
    # share of train held out (stratified, seeded) to choose the epoch on; 0: train on all, keep the last weights;
    # None: the dataset's own validation split, else DEFAULT_VAL_FRACTION (cnnlab.training.selection)
    val_fraction: float | None = None
    eval_test_every_epoch: bool = False  # also evaluate test after each epoch (recorded, plotted, never used to choose)
    epochs: int | None = None  # None: 10, or more on a small training set (cnnlab.training.defaults)
    max_steps: int | None = None  # train exactly this many optimizer steps instead (the schedule spans them)
    batch_size: int | None = None  # global: split across processes under DDP; None: 128, less on a small training set
    eval_batch_size: int = 256  # measured on 2 CPU cores: 1.6-3x the images/s of 1024 (activations stay in cache)
    tta: str = "none"  # test-time augmentation in evaluation (cnnlab.training.tta): none, flip, shift, flip-shift
    eval_every: int = 1  # evaluate every this many epochs and after the last (Keras' validation_freq)
    optimizer: str = "adamw"
    lr: float | None = None  # peak learning rate; None: DEFAULT_LR[optimizer] (more on a small training set)
    momentum: float = 0.9  # SGD momentum, or Adam's beta1
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY[optimizer]
    schedule: str = "onecycle"
    warmup: float | None = None  # epochs of linear warm-up; None: 30% of the run for onecycle, else 0
    label_smoothing: float = 0.0  # share of the target probability spread over the other classes
    grad_clip: float | None = None  # clip the global gradient norm to this value; None: no clipping
    whiten: bool = False  # the first conv becomes a frozen patch-whitening layer fitted on train (cnnlab.training.whitening)
    ema: float | None = None  # keep an exponential moving average of the weights, this decay per step (0.999); None: off
    early_stop: int | None = None  # stop after this many evaluated epochs without improvement of `monitor`; None: off
    monitor: str = "val_loss"  # what --early-stop and --schedule plateau watch, on the validation split only
    plateau_patience: int = 3  # --schedule plateau: evaluated epochs without improvement tolerated before a cut
    plateau_factor: float = 0.1  # --schedule plateau: each cut multiplies the learning rates by this
    dropout: float | None = None  # passed to the model builder when set (not every model has one)
    augment: str = "none"  # an augmentation pipeline (`cnnlab augment --help`), applied to train only
    mix: str = "none"  # MixUp / CutMix per sample, train only: "mixup:0.2", "cutmix:1.0:p=0.5" (cnnlab.augment.mixing)
    precision: str = "auto"  # auto: bf16 where the CPU/GPU supports it, else fp32 (fp16 + scaling on CUDA)
    device: str = "auto"  # auto: cuda if available, else cpu
    channels_last: bool = True  # NHWC memory layout: faster convolutions on CPUs (oneDNN) and GPUs
    compile: bool = False  # torch.compile the model; measured slower for small nets on 2 CPU cores
    # cnnlab.fuse the model (in place) before training: ReLU -> 2x2 max-pool pairs pool first, on the C kernel
    # on CPUs; bit-identical values and gradients, fewer passes over the largest maps. False: the modules as built
    fuse: bool = True
    seed: int = 0  # one seed fixes initialisation, data order, augmentation and dropout
    out: str | None = None  # run directory; None: runs/<model>-<data>-<time>
    checkpoint_every: int = 0  # also checkpoint every this many steps (0: at the end of each epoch only)
    keep_checkpoints: int = 2  # rotation keeps this many, so an unreadable newest one has a fallback
    recipe: str | None = None  # the named recipe these options started from, if any
    monitor_gradients: bool = False  # record per-layer gradient norms (RUN/gradients.jsonl) and warn on vanishing
    extra: dict[str, Any] = field(default_factory=dict)  # model builder options beyond dropout
    # imbalanced classes: "auto" weighs the loss by N / (K * n_c), so every class carries the same total weight
    class_weights: str = "none"
    sampler: str = "shuffle"  # "balanced": each epoch draws every class equally often (rare images repeat)
    # k-fold: validate on fold `fold` (1-based) of `folds` stratified folds of train (`cnnlab train --folds K`
    # sets both for its sub-runs, cnnlab.training.folds); None: no folds
    folds: int | None = None
    fold: int | None = None
    log: str = "none"  # also log to "csv" (RUN/metrics.csv), "tensorboard" (RUN/tensorboard/) or "csv,tensorboard"

    # ---- resolution ---------------------------------------------------------------------------
    def resolved(self) -> TrainConfig:
        """A copy with `None` defaults filled in and every option checked; raises `CnnlabError`."""
        c = dataclasses.replace(self, extra=dict(self.extra) if isinstance(self.extra, dict) else self.extra)
        c.optimizer = _choice("optimizer", c.optimizer, OPTIMIZERS)
        c.schedule = _choice("schedule", c.schedule, SCHEDULES)
        c.precision = _choice("precision", c.precision, PRECISIONS)
        c.device = _choice("device", c.device, DEVICES)
        c.tta = _choice("tta", c.tta, TTA_MODES)
        c.class_weights = _choice("class-weights", c.class_weights, CLASS_WEIGHTS)
        c.sampler = _choice("sampler", c.sampler, SAMPLERS)
        c.log = ",".join(dict.fromkeys(_choice("log", part.strip(), LOGGERS) for part in str(c.log).split(",")
                                       if part.strip().lower() not in ("", "none"))) or "none"
        if c.folds is not None or c.fold is not None:
            if c.folds is None or c.fold is None:
                raise CnnlabError(f"folds and fold go together (fold {c.fold!r} of folds {c.folds!r}); "
                                  "`cnnlab train --folds K` sets both for its sub-runs")
            check_folds(c.folds, c.fold)
        if c.epochs is None:  # the large-data defaults; the Trainer fills these from the data's size first
            c.epochs = DEFAULT_EPOCHS
        if c.batch_size is None:
            c.batch_size = DEFAULT_BATCH
        if c.lr is None:
            c.lr = DEFAULT_LR[c.optimizer]
        if c.weight_decay is None:
            c.weight_decay = DEFAULT_WEIGHT_DECAY[c.optimizer]
        _positive_int("epochs", c.epochs, MAX_EPOCHS)  # before the warm-up default is computed from it
        if c.warmup is None:
            c.warmup = 0.3 * c.epochs if c.schedule == "onecycle" else 0.0
        _positive_int("batch-size", c.batch_size, MAX_BATCH)
        _positive_int("eval-batch-size", c.eval_batch_size, MAX_BATCH)
        _positive_int("eval-every", c.eval_every, MAX_EPOCHS)
        _positive_int("keep-checkpoints", c.keep_checkpoints, MAX_CHECKPOINTS)
        _number("lr", c.lr, low=0.0, low_open=True, hint="try 1e-3 for adam/adamw or 0.05 for sgd")
        _number("weight-decay", c.weight_decay, low=0.0)
        _number("momentum", c.momentum, low=0.0, high=1.0, high_open=True)
        _number("warmup", c.warmup, low=0.0, high=float(c.epochs), hint=f"epochs, at most --epochs {c.epochs}")
        _number("label-smoothing", c.label_smoothing, low=0.0, high=1.0, high_open=True)
        if c.val_fraction is not None:
            _number("val-fraction", c.val_fraction, low=0.0, high=1.0, high_open=True,
                    hint="0.1 holds out 10% of train to choose the epoch on; 0 trains on all and keeps the last weights")
        if c.grad_clip is not None:
            _number("grad-clip", c.grad_clip, low=0.0, low_open=True)
        if c.ema is not None:
            _number("ema", c.ema, low=0.0, high=1.0, low_open=True, high_open=True, hint="the decay per step, e.g. 0.999")
        if c.early_stop is not None:
            _positive_int("early-stop", c.early_stop, MAX_EPOCHS)
        c.monitor = _choice("monitor", c.monitor, MONITORS)
        if not isinstance(c.plateau_patience, int) or isinstance(c.plateau_patience, bool) or c.plateau_patience < 0:
            raise CnnlabError(f"plateau-patience must be an integer >= 0 (evaluated epochs), got {c.plateau_patience!r}")
        _number("plateau-factor", c.plateau_factor, low=0.0, high=1.0, low_open=True, high_open=True)
        if c.dropout is not None:
            _number("dropout", c.dropout, low=0.0, high=1.0, high_open=True)
        if c.image_size is not None:
            _positive_int("image-size", c.image_size, MAX_IMAGE_SIDE)
        if c.max_steps is not None:
            _positive_int("max-steps", c.max_steps, MAX_STEPS)
        if not isinstance(c.checkpoint_every, int) or not 0 <= c.checkpoint_every <= MAX_STEPS:
            raise CnnlabError(f"checkpoint-every must be an integer from 0 to {MAX_STEPS:,} (steps), got {c.checkpoint_every!r}")
        if not isinstance(c.seed, int) or isinstance(c.seed, bool) or not 0 <= c.seed < 1 << 63:
            raise CnnlabError(f"seed must be an integer from 0 to 2**63 - 1 (what torch.manual_seed takes), got {c.seed!r}")
        for label, value in (("model", c.model), ("data", c.data), ("augment", c.augment)):
            if not isinstance(value, str):
                raise CnnlabError(f"{label} must be a string, got {value!r} ({type(value).__name__})")
        for label, value in (("data-dir", c.data_dir), ("out", c.out), ("recipe", c.recipe)):
            if value is not None and not isinstance(value, str):
                raise CnnlabError(f"{label} must be a string (a path or name), got {value!r} ({type(value).__name__})")
        for label, value in (("channels-last", c.channels_last), ("compile", c.compile),
                             ("monitor-gradients", c.monitor_gradients), ("fuse", c.fuse),
                             ("eval-test-every-epoch", c.eval_test_every_epoch)):
            if not isinstance(value, bool):
                raise CnnlabError(f"{label} must be true or false, got {value!r} ({type(value).__name__})")
        parse_mix(c.mix)  # a malformed --mix fails here, before anything is loaded or written
        if not isinstance(c.extra, dict):
            raise CnnlabError(f"extra (model options) must be a table of KEY = VALUE, got {c.extra!r}")
        if not str(c.model).strip():
            raise CnnlabError("model must be a model name or spec, got an empty string; `cnnlab models` lists names")
        return c

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "config") -> TrainConfig:
        """Build from a mapping, refusing unknown keys (a typo must not be silently ignored)."""
        return cls(**_checked_fields(d, where))


def config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _checked_fields(d: dict[str, Any], where: str) -> dict[str, Any]:
    names = config_fields()
    out = {}
    for key, value in d.items():
        name = key.replace("-", "_")
        if name not in names:
            raise CnnlabError(f"{where}: unknown option '{key}'{did_you_mean(name, names)}; options: {', '.join(names)}")
        out[name] = value
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a TOML file (`epochs = 5`, `model = "resnet20"`; a `[train]` table is also accepted)."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"config file not found: '{path}'; give a TOML file such as run.toml")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CnnlabError(f"config file '{path}' is not valid TOML: {e}") from None
    if "train" in data and isinstance(data["train"], dict):
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    fields = _checked_fields(data, f"config file '{path}'")
    _check_types(fields, f"config file '{path}'")
    return fields


# The JSON/TOML types each kind of field annotation accepts (an int is a float too; a bool is no number).
_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "dict[str, Any]": (dict,)}


def _check_types(fields: dict[str, Any], where: str) -> None:
    """Refuse a value of the wrong type (`epochs = "5"`, `extra = 3`) in one line naming the file and the option."""
    annotations = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for name, value in fields.items():
        base = str(annotations[name]).removesuffix(" | None")
        allowed = _TYPES.get(base)
        if allowed is None or value is None:
            continue
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            example = {"str": '"text"', "int": "5", "float": "0.5", "bool": "true", "dict[str, Any]": "{ width = 16 }"}[base]
            raise CnnlabError(f"{where}: '{name}' must be {base.split('[')[0]} (e.g. {name} = {example}), "
                              f"got {str(value)[:40]!r} ({type(value).__name__})")


def merge(*layers: dict[str, Any]) -> TrainConfig:
    """Later layers win; `None` values in a layer mean "not given" and do not override."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for k, v in layer.items():
            if v is None:
                continue
            if k == "extra" and isinstance(merged.get("extra"), dict) and isinstance(v, dict):
                v = {**merged["extra"], **v}  # builder options combine: a recipe's width plus a flag's dropout
            merged[k] = v
    return TrainConfig.from_dict(merged)


# ---- validators ------------------------------------------------------------------------------
def _choice(label: str, value: str, allowed: tuple[str, ...]) -> str:
    v = str(value).lower()
    if v not in allowed:
        raise CnnlabError(f"unknown {label} '{value}'{did_you_mean(v, allowed)}; choose one of: {', '.join(allowed)}")
    return v


def _positive_int(label: str, value: Any, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (high is not None and value > high):
        most = f" of at most {high:,}" if high is not None else ""
        shown = repr(value) if not isinstance(value, int) or abs(value) < 10**20 else f"a {len(str(abs(value)))}-digit number"
        raise CnnlabError(f"{label} must be a positive integer{most}, got {shown}")


def _number(label, value, *, low=None, high=None, low_open=False, high_open=False, hint="") -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        rng = f"in {lo or '(-inf'}, {hi or 'inf)'}"
        raise CnnlabError(f"{label} must be a number {rng}, got {value!r}" + (f"; {hint}" if hint else ""))
