"""Training: `train(...)` / `Trainer`, the run directory, and what to do with a finished run.

    >>> from cnnlab.train import train, evaluate, predict, export
    >>> run = train(model="simple_cnn", data="fashion-mnist", epochs=2)
    >>> print(evaluate(run.path).table())
    >>> predict(run.path, ["shoe.png"], top_k=3)
    >>> export(run.path, "onnx")

Modules: config (TrainConfig), step (TrainStep: the one training step), loop (Trainer), callbacks,
rundir (RunWriter: the run directory as a callback), monitor (gradient norms), optim, precision,
checkpoint, run (run directory), distributed (DDP), recipes, lr_find, evaluate, predict, export,
progress, plots.
"""

from cnnlab._callable import make_callable
from cnnlab.train.api import resolve_config, train
from cnnlab.train.callbacks import Callback
from cnnlab.train.config import TrainConfig
from cnnlab.train.evaluate import EvalResult, evaluate
from cnnlab.train.export import export
from cnnlab.train.loop import NonFiniteLossError, Trainer, TrainingInterrupted, TrainResult
from cnnlab.train.lr_find import LrFindResult, lr_find
from cnnlab.train.predict import Prediction, predict
from cnnlab.train.recipes import RECIPES
from cnnlab.train.run import ModelCard, RunDir, open_run
from cnnlab.train.rundir import RunWriter
from cnnlab.train.step import StepOutput, TrainStep

__all__ = [
    "RECIPES", "Callback", "EvalResult", "LrFindResult", "ModelCard", "NonFiniteLossError", "Prediction", "RunDir",
    "RunWriter", "StepOutput", "TrainConfig", "TrainResult", "TrainStep", "Trainer", "TrainingInterrupted", "evaluate",
    "export", "lr_find", "open_run", "predict", "resolve_config", "train",
]

make_callable(__name__, "train")
