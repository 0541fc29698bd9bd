"""Vanishing gradients and skip connections: plain20/56 vs resnet20/56 (He et al. 2016, Figures 1 and 6).

A thin layer over `cnnlab.inspect.gradients.gradient_lab` (the same lab as `cnnlab gradients`): every
model trains for the same steps on the same batches; the table compares their losses and the gradient
norm of the first conv layer against the last (fc) layer.
"""

from __future__ import annotations

from cnnlab.experiments._base import ExperimentContext, Outcome, register_experiment
from cnnlab.inspect.gradients import gradient_lab

MODELS = ("plain20", "plain56", "resnet20", "resnet56")
VANISHED = 1e-2  # "orders of magnitude smaller": the first layer's norm below 1% of the last layer's


@register_experiment(
    "gradients",
    title="Vanishing gradients and skip connections",
    claim="Deep plain nets suffer vanishing gradients and train worse than shallow ones; skip connections cure it.",
    order=60,
    budget="about 2-3 min on 2 quiet cores (5 min measured under load 8)",
)
def run(ctx: ExperimentContext) -> Outcome:
    steps, batch = (3, 8) if ctx.quick else (40, 64)
    ctx.progress.total = len(MODELS) * steps
    lab = gradient_lab(MODELS, ctx.data, steps=steps, batch_size=batch, seed=ctx.seed, device=ctx.device,
                       data_dir=ctx.data_dir, progress=lambda what, n: ctx.progress.step(what, n))
    lab.plot(ctx.path("plot.png"))
    m = {t.name: t for t in lab.models}
    p20, p56, r20, r56 = (m[k] for k in MODELS)
    worse = p56.loss_end > p20.loss_end
    cured = r56.loss_end < p56.loss_end
    vanished = p56.ratio_init < VANISHED
    resnet_healthy = r56.ratio_init >= VANISHED
    supported = worse and cured and vanished and resnet_healthy
    parts = [f"After {lab.steps} steps plain56 {'trains worse than' if worse else 'does not train worse than'} "
             f"plain20 (loss {p56.loss_end:.3f} vs {p20.loss_end:.3f}, train accuracy "
             f"{p56.train_accuracy:.1%} vs {p20.train_accuracy:.1%})",
             f"resnet56 reaches loss {r56.loss_end:.3f}, {'below' if cured else 'not below'} plain56's "
             f"(resnet20 {r20.loss_end:.3f})",
             f"at initialisation plain56's first conv layer gets {p56.ratio_init:.2g}× the gradient norm of its "
             f"last layer (resnet56 {r56.ratio_init:.2g}×, plain20 {p20.ratio_init:.2g}×)"]
    verdict = "; ".join(parts) + "."
    if worse and cured and not vanished:
        verdict += (" The degradation is real and the shortcuts remove it, but with batch norm the plain net's early "
                    "gradients are not vanishing (He et al. say as much in sec. 4.1); "
                    "`cnnlab gradients --no-batch-norm --activation sigmoid` shows the vanishing case.")
    rows = lab.rows()
    return Outcome(
        columns=list(lab.COLUMNS), rows=rows, supported=supported, verdict=verdict, plot="plot.png",
        headers=dict(lab.HEADERS), fmt=dict(lab.FORMATS),
        notes=[f"{lab.data}, {lab.steps} SGD steps (momentum 0.9, lr {lab.lr:g}, constant) of batch {lab.batch_size}, "
               f"the same batches for every model, {lab.device} {lab.precision}, batch norm on (the paper's setup)",
               "loss after N and train accuracy: over the batches of the last 10% of the steps; ‖g‖: L2 norm of a "
               "layer's weight gradient, at the first step (init) and the geometric mean over the last 10% (end)",
               f"supported needs all of: plain56 loss > plain20 loss, resnet56 loss < plain56 loss, plain56 "
               f"first/last < {VANISHED:g} at init and resnet56 first/last >= {VANISHED:g}",
               "the same lab with other knobs: `cnnlab gradients --help`"],
    )
