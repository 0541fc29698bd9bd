"""Training: `train(...)` / `Trainer`, the run directory, and what to do with a finished run.

    >>> from cnnlab.training import train, evaluate, predict, export
    >>> run = train(model="simple_cnn", data="fashion-mnist", epochs=2)
    >>> print(evaluate(run.path).table())
    >>> predict(run.path, ["shoe.png"], top_k=3)
    >>> export(run.path, "onnx")

Modules: config (TrainConfig), step (TrainStep: the one training step), loop (Trainer), callbacks,
rundir (RunWriter: the run directory as a callback), monitor (gradient norms), optim, precision,
checkpoint (resume state), run (a run's model), distributed (DDP), recipes, lr_find, evaluate, predict,
export, progress, folds (k-fold cross-validation), logging_callbacks (--log csv/tensorboard). The run directory and model card are `cnnlab.core.run`; figures are `cnnlab.core.figures`.
"""

from cnnlab.training.api import resolve_config, train
from cnnlab.training.callbacks import Callback
from cnnlab.training.config import TrainConfig
from cnnlab.training.evaluate import EvalResult, evaluate
from cnnlab.training.export import export
from cnnlab.training.folds import FoldsResult, train_folds
from cnnlab.training.loop import NonFiniteLossError, Trainer, TrainingInterrupted, TrainResult
from cnnlab.training.lr_find import LrFindResult, lr_find
from cnnlab.training.predict import Prediction, predict
from cnnlab.training.recipes import RECIPES
from cnnlab.training.run import load_model
from cnnlab.training.rundir import RunWriter
from cnnlab.training.step import StepOutput, TrainStep

__all__ = [
    "RECIPES", "Callback", "EvalResult", "FoldsResult", "LrFindResult", "NonFiniteLossError", "Prediction", "RunWriter",
    "StepOutput", "TrainConfig", "TrainResult", "TrainStep", "Trainer", "TrainingInterrupted", "evaluate",
    "export", "load_model", "lr_find", "predict", "resolve_config", "train",
    "train_folds",
]
