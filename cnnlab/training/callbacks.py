"""`Callback`: the hooks of the training loop (Keras style). Override the ones you need.

Order of the hooks in one `Trainer.fit()`:

    on_fit_start                      everything set up (model on its device, optimizer, data)
    per epoch:  on_epoch_start
                per step:  on_after_backward   gradients in `.grad`, unscaled, before clipping and the step
                           on_step_end
                           on_checkpoint       when one is due (every `checkpoint_every` steps, a stop signal)
                on_evaluate                    rank 0, evaluated or not: the epoch's record, before it is
                                               logged and saved (a callback may add figures to it)
                on_epoch_end                   the epoch's record is in `trainer.history`
                on_checkpoint                  at the start of the next epoch (step 0)
    on_fit_end                        after the last epoch (not when training stopped with an error)

Any hook may set `trainer.stop_training = True`: set in `on_step_end`, training ends after that step
(the unfinished epoch is neither evaluated nor recorded); set in `on_epoch_end`, after that epoch.
A callback with state that must survive a resume returns it from `state_dict()` (tensors, numbers,
strings, lists and dicts: what `torch.load(weights_only=True)` reads); the Trainer saves it in every
checkpoint under `state_key` and hands it back to `load_state_dict` on resume, before `on_fit_start`
of the callbacks after the `RunWriter` (which restores the checkpoint in its own `on_fit_start`).

Writing the run directory is one such callback (`cnnlab.training.rundir.RunWriter`), so a Trainer without
it trains in memory and writes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for the annotations only: the loop imports this module
    from cnnlab.training.evaluate import EvalResult
    from cnnlab.training.loop import Trainer


class Callback:
    """Hooks into the loop; `trainer` exposes its state (model, optimizer, history, config, run, ...)."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_after_backward(self, trainer: Trainer, epoch: int, step: int) -> None:
        """Gradients are in `.grad` here: after backward (unscaled), before clipping and the optimizer step."""

    def on_step_end(self, trainer: Trainer, epoch: int, step: int) -> None: ...

    def on_evaluate(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """Rank 0 only: `record` (the epoch's metrics) is built but not yet logged or saved; add keys to it here."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None: ...

    def on_checkpoint(self, trainer: Trainer, epoch: int, step: int) -> None:
        """A checkpoint is due: `trainer.checkpoint_state(epoch, step)` continues at `step` of 0-based `epoch`."""

    def on_fit_end(self, trainer: Trainer, last_eval: EvalResult | None) -> None: ...

    # ---- state that a checkpoint carries (none by default) ---------------------------------------
    @property
    def state_key(self) -> str:
        """The name of this callback's state in a checkpoint (one callback of each class by default)."""
        return type(self).__name__

    def state_dict(self) -> dict[str, Any] | None:
        """What a resumed run needs to continue bit for bit; None: nothing."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s value, saved in the checkpoint being resumed."""
