"""`cnnlab.transfer_learning.transfer(...)` and `probe(...)`: the functions behind `cnnlab transfer`.

    >>> from cnnlab.transfer_learning import transfer, probe
    >>> r = transfer("runs/simple_cnn-fashion-mnist-…", "digits", strategy="auto", train_per_class=10)
    >>> print(r.table())                       # the strategy next to its two baselines
    >>> probe("resnet18:imagenet", "digits")    # linear-probe accuracy at every stage

The lecture's four cases (CS231n "Transfer Learning" notes), named and explained by `auto`:
  small data, similar to the backbone's   -> linear classifier on the top features  (`features`)
  large data, similar                     -> fine-tune the whole network             (`finetune`)
  small data, different                   -> linear classifier on earlier features  (`features` at the
                                             stage with the best cross-validated probe)
  large data, different                   -> train the whole network from the backbone's weights (`retrain`)
"Similar" is measured: the backbone's features, linearly probed (cross-validation on the training set
only), beat a probe on raw pixels. "Large" is at least `large_per_class` training images per class.
The rule is then checked, not trusted: `auto` measures every candidate strategy on held-out parts of the
training set (`cnnlab.transfer_learning.auto`), runs the best, and says whether the rule agreed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.core.figures import save_figure, subplots
from cnnlab.core.files import atomic_write_json, atomic_write_text
from cnnlab.data import load_dataset
from cnnlab.data.memory import stratified_sample
from cnnlab.errors import CnnlabError
from cnnlab.transfer_learning.adapt import make_adapter
from cnnlab.transfer_learning.auto import Candidate, Selection, select, validation_splits
from cnnlab.transfer_learning.backbone import Backbone, Truncated, check_layer, cut, cut_points, load_backbone
from cnnlab.transfer_learning.features import cached_features
from cnnlab.transfer_learning.finetune import Classifier, finetune, fit
from cnnlab.transfer_learning.heads import HEADS, cv_accuracy, fit_head

STRATEGIES = ("features", "finetune", "retrain", "auto")


@dataclass
class TransferResult:
    """Rows of `{method, head, layer, train_images, test_accuracy, seconds, note}`; accuracies in [0, 1]."""

    backbone: str
    data: str
    rows: list[dict[str, Any]]
    adaptation: str
    case: str | None = None  # what `auto` found, in words
    path: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)
    selection: Selection | None = None  # what `auto` measured on the training set and chose

    def table(self) -> str:
        lines = ["| method | head | layer | train images | test accuracy | seconds | note |",
                 "|---|---|---|---:|---:|---:|---|"]
        for r in self.rows:
            lines.append(f"| {r['method']} | {r['head']} | {r['layer']} | {r['train_images']:,} | "
                         f"{100 * r['test_accuracy']:.2f}% | {r['seconds']:.1f} | {r.get('note', '')} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "data": self.data, "adaptation": self.adaptation, "case": self.case,
                "rows": self.rows, "details": self.details}


def _load_data(data, train_per_class: int | None, seed: int, data_dir=None):
    ds = load_dataset(data, data_dir=data_dir) if isinstance(data, str) else data
    if not hasattr(ds.train, "images"):
        raise CnnlabError(f"transfer needs a dataset held in memory; '{ds.name}' streams from disk")
    train = ds.train
    if train_per_class is not None:
        if not isinstance(train_per_class, int) or isinstance(train_per_class, bool) or train_per_class < 1:
            raise CnnlabError(f"train_per_class must be a positive integer, got {train_per_class!r}")
        train = train.subset(stratified_sample(train.labels, train_per_class, seed))
    return ds, train


class _Session:
    """One backbone on one (sub-sampled) dataset: shared adapter, feature cache, baselines."""

    def __init__(self, backbone: Backbone, ds, train, *, image_size, cache_dir, device, precision, seed,
                 steps, lr, batch_size, log):
        self.backbone, self.ds, self.train = backbone, ds, train
        self.data = dataclasses.replace(ds, train=train, val=None)  # what fine-tuning and retraining train on
        self.adapter = make_adapter(ds.input_size, backbone, ds.mean, ds.std, image_size)
        self.cache_dir, self.device, self.precision = cache_dir, device, precision
        self.seed, self.steps, self.lr, self.batch_size, self.log = seed, steps, lr, batch_size, log

    def features(self, layer: str, pool: str = "flatten", splits: tuple[str, ...] = ("train", "test")):
        """Cached features of the named splits ("train": the (sub-sampled) training set, "test")."""
        body = cut(self.backbone, layer, pool)
        out = []
        for name in splits:
            split = self.train if name == "train" else self.ds.test
            out.append(cached_features(body, self.adapter, split.images, split.labels,
                                       weights_id=self.backbone.weights_id, layer=layer, pool=pool,
                                       cache_dir=self.cache_dir, device=self.device, precision=self.precision))
        return out

    def row(self, method, head, layer, acc, seconds, note="") -> dict[str, Any]:
        r = {"method": method, "head": head, "layer": layer, "train_images": len(self.train),
             "test_accuracy": acc, "seconds": seconds, "note": note}
        self.log(f"  {method:<22} {head:<7} {layer:<12} {100 * acc:6.2f}%  ({seconds:.1f} s) {note}")
        return r

    # ---- strategies ---------------------------------------------------------------------------
    def run_features(self, layer: str, head: str, method: str = "features", pool: str = "flatten") -> dict[str, Any]:
        t0 = time.perf_counter()
        tr, te = self.features(layer, pool)
        fitted = fit_head(head, tr.x, tr.y, num_classes=self.ds.num_classes, seed=self.seed)
        note = f"{tr.x.shape[1]:,} features, cache {'hit' if tr.cached and te.cached else 'miss'}"
        if "C" in fitted.info:
            note += f", C={fitted.info['C']:g}"
        return self.row(method, head, layer, fitted.accuracy(te.x, te.y), time.perf_counter() - t0, note)

    def _classifier(self, body: nn.Module) -> Classifier:
        torch.manual_seed(self.seed)
        with torch.no_grad():
            dim = body(self.adapter(self.train.images[:2])).shape[1]
        return Classifier(self.adapter, body, nn.Linear(dim, self.ds.num_classes))

    def _finetune(self, layer: str, data, steps: int) -> tuple[float, list]:
        """Fine-tune a copy of the backbone cut at `layer` on `data.train`; accuracy on `data.test`."""
        model = self._classifier(cut(self.backbone, layer))
        reports = finetune(model, data, lr=self.lr, head_steps=max(steps // 4, 1), body_steps=steps,
                           batch_size=self.batch_size, seed=self.seed, device=self.device, precision=self.precision)
        return reports[1].test_accuracy, reports

    def run_finetune(self, layer: str, method: str = "finetune") -> dict[str, Any]:
        t0 = time.perf_counter()
        acc, reports = self._finetune(layer, self.data, self.steps)
        rates = reports[1].rates
        note = (f"{max(self.steps // 4, 1)} head steps at lr {self.lr:g}, then {self.steps} steps, body lr "
                f"{min(rates.values()):.1e}..{max(v for k, v in rates.items() if k != 'head'):.1e}")
        return self.row(method, "linear", layer, acc, time.perf_counter() - t0, note)

    def _fit_all(self, body: nn.Module, data, steps: int) -> float:
        """Train every layer of `body` + a new head on `data.train` (as many steps as finetune's two stages
        together); accuracy on `data.test`."""
        model = self._classifier(body)
        lr = self.lr  # every layer at the head's rate: a from-scratch rate for AdamW
        report = fit(model, data, [{"params": list(model.parameters()), "lr": lr}], steps=steps + max(steps // 4, 1),
                     batch_size=self.batch_size, seed=self.seed, device=self.device, precision=self.precision)
        return report.test_accuracy

    def _train_all(self, body: nn.Module, method: str, layer: str, note: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        acc = self._fit_all(body, self.data, self.steps)
        return self.row(method, "linear", layer, acc, time.perf_counter() - t0, f"{note}, lr {self.lr:g}")

    def run_retrain(self, layer: str, method: str = "retrain") -> dict[str, Any]:
        return self._train_all(cut(self.backbone, layer), method, layer, "all layers from the backbone's weights")

    def run_scratch(self, layer: str) -> dict[str, Any]:
        body = Truncated(self.backbone.fresh(), layer)
        return self._train_all(body, "baseline: scratch", layer, "same architecture, random init")

    # ---- auto: candidates measured on held-out parts of the training set --------------------------
    def _fold_data(self, fit_idx: torch.Tensor, held_idx: torch.Tensor):
        """The training set split in two: train on `fit_idx`, "test" on `held_idx` (the real test set is
        not in it, so nothing trained or scored here can see it)."""
        return dataclasses.replace(self.ds, train=self.train.subset(fit_idx), test=self.train.subset(held_idx),
                                   val=None)

    def candidates(self, layers: list[str], head: str, steps: int) -> list[Candidate]:
        """`features` at each of `layers` (cheap: cached features, the head's C by inner cross-validation),
        then `finetune` and `retrain` at the first layer, each for `steps` steps."""
        out = []
        for layer in layers:
            pool = "flatten" if layer == layers[0] else _pool_for(self, layer)

            def score_features(fit_idx, held_idx, layer=layer, pool=pool) -> float:
                (tr,) = self.features(layer, pool, splits=("train",))
                fitted = fit_head(head, tr.x[fit_idx], tr.y[fit_idx], num_classes=self.ds.num_classes, seed=self.seed)
                return fitted.accuracy(tr.x[held_idx], tr.y[held_idx])

            out.append(Candidate("features", layer, head, score_features,
                                 "C by inner CV" if head in ("logreg", "svm") else "full batch"))
        at = layers[0]
        out.append(Candidate("finetune", at, "linear",
                             lambda f, h: self._finetune(at, self._fold_data(f, h), steps)[0],
                             f"{max(steps // 4, 1)}+{steps} steps"))
        out.append(Candidate("retrain", at, "linear",
                             lambda f, h: self._fit_all(cut(self.backbone, at), self._fold_data(f, h), steps),
                             f"{steps + max(steps // 4, 1)} steps"))
        return out

    def choose(self, layer: str, head: str, large_per_class: int, steps: int) -> tuple[str, str, Selection]:
        """`auto`: the lecture's case (named and explained), then the candidates measured on the training
        set; returns (case text, layer of the lecture's features, the selection)."""
        lecture, lecture_layer, case = self.decide(layer, large_per_class)
        protocol, splits = validation_splits(self.train.labels, self.seed)
        layers = [layer] + ([lecture_layer] if lecture == "features" and lecture_layer != layer else [])
        sel = select(self.candidates(layers, head, steps), splits, protocol, lecture=lecture,
                     lecture_layer=lecture_layer if lecture == "features" else layer, log=self.log)
        return case, lecture_layer, sel

    def run_raw(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        x_tr = self.train.images.flatten(1).float() / 255.0  # (N, C*H*W) raw pixels, the data's own size
        x_te = self.ds.test.images.flatten(1).float() / 255.0
        fitted = fit_head("logreg", x_tr, self.train.labels, seed=self.seed)
        return self.row("baseline: raw pixels", "logreg", "pixels", fitted.accuracy(x_te, self.ds.test.labels),
                        time.perf_counter() - t0, f"{x_tr.shape[1]:,} pixels, C={fitted.info['C']:g}")

    def decide(self, layer: str, large_per_class: int) -> tuple[str, str, str]:
        """(strategy, layer, explanation) for `auto`: the lecture's four cases, measured."""
        per_class = int(torch.bincount(self.train.labels).min())
        (tr,) = self.features(layer, splits=("train",))  # the training set only: the test set is not looked at
        feat = cv_accuracy(tr.x, tr.y, seed=self.seed)
        raw = cv_accuracy(self.train.images.flatten(1).float() / 255.0, self.train.labels, seed=self.seed)
        similar, large = feat >= raw, per_class >= large_per_class
        size = f"{'large' if large else 'small'} ({per_class} images per class, threshold {large_per_class})"
        sim = (f"{'similar' if similar else 'different'} (cross-validated linear probe on the training set: "
               f"backbone features '{layer}' {100 * feat:.1f}% vs raw pixels {100 * raw:.1f}%)")
        if similar and not large:
            return "features", layer, f"case 1: small data, similar: {size}, {sim} -> linear classifier on the features"
        if similar and large:
            return "finetune", layer, f"case 2: large data, similar: {size}, {sim} -> fine-tune"
        if large:
            return "retrain", layer, f"case 4: large data, different: {size}, {sim} -> retrain all layers"
        best, best_acc = layer, feat
        for stage in [s["name"] for s in getattr(self.backbone.model, "feature_info", [])]:
            (stage_tr,) = self.features(stage, _pool_for(self, stage), splits=("train",))
            acc = cv_accuracy(stage_tr.x, stage_tr.y, seed=self.seed)
            if acc > best_acc:
                best, best_acc = stage, acc
        return "features", best, (f"case 3: small data, different: {size}, {sim} -> linear classifier on earlier "
                                  f"features: '{best}' probes best ({100 * best_acc:.1f}%)")


def _pool_for(session: _Session, layer: str, limit: int = 32768) -> str:
    """Flatten a cut unless it has more than `limit` numbers per image; then global-average-pool it."""
    with torch.no_grad():
        dim = cut(session.backbone, layer)(session.adapter(session.train.images[:1])).shape[1]
    return "flatten" if dim <= limit else "avg"


def transfer(backbone: str | Backbone, data: Any, *, strategy: str = "auto", head: str = "logreg",
             layer: str = "pre_logits", train_per_class: int | None = None, out: str | Path | None = None,
             baselines: bool = True, seed: int = 0, steps: int = 300, lr: float = 3e-3, batch_size: int = 64,
             image_size: int | None = None, large_per_class: int = 500, cache_dir: str | Path | None = None,
             device: str = "cpu", precision: str = "auto", data_dir: str | Path | None = None,
             auto_steps: int | None = None, verbose: bool = True) -> TransferResult:
    """Transfer `backbone` to `data` with one or more strategies (comma-separated, or "all"), each next to
    the two baselines on the same split: logistic regression on raw pixels, and the same architecture
    trained from scratch. Writes `results.json` and `results.md` to `out` when given.

    `auto` names the lecture's case, then measures the candidates (`features`, `finetune`, `retrain`) on
    held-out parts of the training set (see `cnnlab.transfer_learning.auto`; `auto_steps` shortens the
    costly candidates' runs there, default `steps`) and runs the best; `result.selection` holds its table."""
    wanted = list(STRATEGIES) if strategy == "all" else [s.strip() for s in str(strategy).split(",") if s.strip()]
    for s in wanted:
        if s not in STRATEGIES:
            raise CnnlabError(f"unknown strategy '{s}'; choose from: {', '.join(STRATEGIES)}, all (or a comma list)")
    if head not in HEADS:
        raise CnnlabError(f"unknown head '{head}'; choose one of: {', '.join(HEADS)}")
    for label, v in (("steps", steps), ("batch_size", batch_size), ("auto_steps", auto_steps or 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise CnnlabError(f"{label} must be a positive integer, got {v!r}")
    bb = backbone if isinstance(backbone, Backbone) else load_backbone(backbone)
    check_layer(bb.model, layer)
    ds, train = _load_data(data, train_per_class, seed, data_dir)
    log = print if verbose else (lambda *_: None)
    s = _Session(bb, ds, train, image_size=image_size, cache_dir=cache_dir, device=device, precision=precision,
                 seed=seed, steps=steps, lr=lr, batch_size=batch_size, log=log)
    log(f"backbone {bb}; data {ds.name}: {len(train)} training images, {len(ds.test)} test images")
    if bb.config:
        log(bb.config)
    log(f"adaptation: {s.adapter.describe()}")
    rows, case, selection = [], None, None
    for name in wanted:
        chosen, at = name, layer
        if name == "auto":
            case, _, selection = s.choose(layer, head, large_per_class, auto_steps or steps)
            log(f"auto: lecture's rule: {case}")
            log(f"auto: validation: {selection.protocol}; the test set is not used")
            log(selection.table())
            log(f"auto: rule: {selection.rule()}")
            log(f"auto: {selection.verdict()}")
            chosen, at = selection.choice["strategy"], selection.choice["layer"]
        method = f"auto -> {chosen}" if name == "auto" else chosen
        same = next((r for r in rows if r["method"] == chosen and r["layer"] == at
                     and (chosen != "features" or r["head"] == head)), None)
        if name == "auto" and same is not None:  # already run above with the same settings and seed
            rows.append({**same, "method": method, "note": f"the {chosen} row above (same run); {same.get('note', '')}"})
            log(f"  {method:<22} the {chosen} row above")
        elif chosen == "features":  # an earlier stage than --layer (case 3) is pooled as `auto` measured it
            rows.append(s.run_features(at, head, method, "flatten" if at == layer else _pool_for(s, at)))
        elif chosen == "finetune":
            rows.append(s.run_finetune(at, method))
        else:
            rows.append(s.run_retrain(at, method))
    if baselines:
        rows.append(s.run_raw())
        rows.append(s.run_scratch(layer))
    result = TransferResult(str(backbone), ds.name, rows, s.adapter.describe(), case,
                            details={"train_per_class": train_per_class, "seed": seed, "steps": steps, "lr": lr,
                                     "backbone_source": bb.source, "weights_sha256": bb.weights_id},
                            selection=selection)
    if selection is not None:
        result.details["auto"] = selection.to_dict()
    if out is not None:
        result.path = Path(out)
        atomic_write_json(result.path / "results.json", result.to_dict())
        extra = "" if selection is None else (f"\n\nauto: lecture's rule: {case}\n\nauto: validation: "
                                              f"{selection.protocol}\n\n{selection.table()}\n\n"
                                              f"auto: rule: {selection.rule()}\n\nauto: {selection.verdict()}")
        atomic_write_text(result.path / "results.md", result.table() + extra + "\n")
    return result


@dataclass
class ProbeResult:
    """Linear-probe test accuracy at each cut, in forward order (depth 1 = first stage)."""

    backbone: str
    data: str
    rows: list[dict[str, Any]]
    path: Path | None = None

    def table(self) -> str:
        lines = ["| depth | layer | features | test accuracy |", "|---:|---|---:|---:|"]
        for r in self.rows:
            lines.append(f"| {r['depth']} | {r['layer']} | {r['dim']:,}{' (avg-pooled)' if r['pool'] == 'avg' else ''} "
                         f"| {100 * r['test_accuracy']:.2f}% |")
        return "\n".join(lines)


def probe(backbone: str | Backbone, data: Any, *, train_per_class: int | None = None, out: str | Path | None = None,
          seed: int = 0, image_size: int | None = None, cache_dir: str | Path | None = None, device: str = "cpu",
          precision: str = "auto", data_dir: str | Path | None = None, verbose: bool = True) -> ProbeResult:
    """Logistic regression (C by cross-validation) on the features of every stage and cut of the backbone:
    which layers transfer. Writes `probe.json`, `probe.md` and `probe.png` to `out` when given."""
    bb = backbone if isinstance(backbone, Backbone) else load_backbone(backbone)
    ds, train = _load_data(data, train_per_class, seed, data_dir)
    log = print if verbose else (lambda *_: None)
    s = _Session(bb, ds, train, image_size=image_size, cache_dir=cache_dir, device=device, precision=precision,
                 seed=seed, steps=1, lr=0.0, batch_size=1, log=log)
    log(f"adaptation: {s.adapter.describe()}")
    layers = [c for c in cut_points(bb.model) if c != "features"]  # `features` repeats the last stage
    rows = []
    for depth, layer in enumerate(layers, 1):
        pool = _pool_for(s, layer)
        tr, te = s.features(layer, pool)
        fitted = fit_head("logreg", tr.x, tr.y, seed=seed)
        rows.append({"depth": depth, "layer": layer, "dim": int(tr.x.shape[1]), "pool": pool,
                     "test_accuracy": fitted.accuracy(te.x, te.y), "C": fitted.info.get("C")})
        log(f"  {depth:>2} {layer:<14} {tr.x.shape[1]:>7,} features  {100 * rows[-1]['test_accuracy']:6.2f}%")
    result = ProbeResult(str(backbone), ds.name, rows)
    if out is not None:
        result.path = Path(out)
        atomic_write_json(result.path / "probe.json", {"backbone": result.backbone, "data": ds.name, "rows": rows})
        atomic_write_text(result.path / "probe.md", result.table() + "\n")
        fig, ax = subplots(figsize=(6, 3.6))
        ax.plot([r["depth"] for r in rows], [100 * r["test_accuracy"] for r in rows], "o-")
        ax.set_xticks([r["depth"] for r in rows], [r["layer"] for r in rows], rotation=30, ha="right")
        ax.set_ylabel("linear-probe test accuracy (%)")
        ax.set_title(f"{bb.name} -> {ds.name}: which layers transfer")
        ax.grid(alpha=0.3)
        save_figure(fig, result.path / "probe.png")
    return result
