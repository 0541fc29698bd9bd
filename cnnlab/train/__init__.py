"""Training: `train(...)` / `Trainer`, the run directory, and what to do with a finished run.

    >>> from cnnlab.train import train, evaluate, predict, export
    >>> run = train(model="simple_cnn", data="fashion-mnist", epochs=2)
    >>> print(evaluate(run.path).table())
    >>> predict(run.path, ["shoe.png"], top_k=3)
    >>> export(run.path, "onnx")

Modules: config (TrainConfig), loop (Trainer), optim, precision, checkpoint, run (run directory),
distributed (DDP), recipes, lr_find, evaluate, predict, export, progress, plots.
"""

from cnnlab._callable import make_callable
from cnnlab.train.api import resolve_config, train
from cnnlab.train.config import TrainConfig
from cnnlab.train.evaluate import EvalResult, evaluate
from cnnlab.train.export import export
from cnnlab.train.loop import Callback, NonFiniteLossError, Trainer, TrainingInterrupted, TrainResult
from cnnlab.train.lr_find import LrFindResult, lr_find
from cnnlab.train.predict import Prediction, predict
from cnnlab.train.recipes import RECIPES
from cnnlab.train.run import ModelCard, RunDir, open_run

__all__ = [
    "RECIPES", "Callback", "EvalResult", "LrFindResult", "ModelCard", "NonFiniteLossError", "Prediction", "RunDir",
    "TrainConfig", "TrainResult", "Trainer", "TrainingInterrupted", "evaluate", "export", "lr_find", "open_run",
    "predict", "resolve_config", "train",
]

make_callable(__name__, "train")
