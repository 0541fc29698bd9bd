"""Defaults that follow the training set's size: batch size, epochs and learning rate left unset.

Fixed defaults (batch 128, 10 epochs) suit Fashion-MNIST's 54,000 training images: 4,220 optimizer steps.
On scikit-learn's digits (1,293 images once validation is held out) the same defaults give 100 steps,
too few for a network to learn what logistic regression learns, and the run under-fits. So on a small
training set, the options not given grow the number of steps, as a person tuning by hand would:

- batch: the largest power of two giving at least `MIN_STEPS_PER_EPOCH` steps per epoch (at least
  `MIN_BATCH`, at most `DEFAULT_BATCH`);
- epochs: enough for `MIN_STEPS` steps in all (at most `MAX_EPOCHS`);
- learning rate: `SMALL_DATA_LR` for the Adam family when batch or epochs were adapted.

A large training set keeps the fixed defaults; options given (flags, recipe, config file, keyword
arguments) always win. `cnnlab demo`'s digits fallback trains with these too. The resolved values and the
reason for each adapted one are recorded in the run's config.json ("defaults").
"""

from __future__ import annotations

import dataclasses

from cnnlab.training.config import DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_LR, TrainConfig

MIN_STEPS_PER_EPOCH = 20  # below this the batch shrinks: each epoch still takes a few steps
MIN_BATCH = 16
MIN_STEPS = 500  # optimizer steps a default run takes at least
MAX_EPOCHS = 100  # a tiny training set gets at most this many epochs by default
SMALL_DATA_LR = {"adam": 3e-3, "adamw": 3e-3}  # measured on digits: see docs/training.md


def size_defaults(config: TrainConfig, train_images: int) -> tuple[TrainConfig, dict[str, str]]:
    """`config` with the unset batch size, epochs and learning rate chosen for `train_images` training
    images, and a note per option saying why it got its value. Options already set are kept."""
    c = dataclasses.replace(config)
    notes: dict[str, str] = {}
    n = max(int(train_images), 1)
    adapted = False
    if c.batch_size is None:
        batch = DEFAULT_BATCH
        while batch > MIN_BATCH and n // batch < MIN_STEPS_PER_EPOCH:
            batch //= 2
        c.batch_size = batch
        if batch != DEFAULT_BATCH:
            adapted = True
            notes["batch_size"] = (f"{batch}, not {DEFAULT_BATCH}: {n:,} training images give {n // batch} steps per "
                                   f"epoch (at least {MIN_STEPS_PER_EPOCH} wanted)")
    if c.epochs is None and c.max_steps is None:
        steps = max(n // c.batch_size, 1)
        epochs = DEFAULT_EPOCHS
        if steps * epochs < MIN_STEPS:
            epochs = min(-(-MIN_STEPS // steps), MAX_EPOCHS)
            adapted = True
            notes["epochs"] = (f"{epochs}, not {DEFAULT_EPOCHS}: {steps} steps per epoch; {epochs} epochs make "
                               f"{steps * epochs} steps (at least {MIN_STEPS} wanted, at most {MAX_EPOCHS} epochs)")
        c.epochs = epochs
    if c.lr is None and adapted and str(c.optimizer).lower() in SMALL_DATA_LR:
        c.lr = SMALL_DATA_LR[str(c.optimizer).lower()]
        notes["lr"] = (f"{c.lr:g}, not {DEFAULT_LR[str(c.optimizer).lower()]:g}: a small training set, "
                       "adapted batch and epochs")
    return c, notes
