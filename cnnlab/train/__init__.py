"""Training: `train(...)` / `Trainer`, the run directory, and what to do with a finished run.

    >>> from cnnlab.train import train, evaluate, predict, export
    >>> run = train(model="simple_cnn", data="fashion-mnist", epochs=2)
    >>> print(evaluate(run.path).table())
    >>> predict(run.path, ["shoe.png"], top_k=3)
    >>> export(run.path, "onnx")

Modules: config (TrainConfig), step (TrainStep: the one training step), loop (Trainer), callbacks,
rundir (RunWriter: the run directory as a callback), monitor (gradient norms), optim, precision,
checkpoint (resume state), run (a run's model), distributed (DDP), recipes, lr_find, evaluate, predict,
export, progress. The run directory and model card are `cnnlab.core.run`; figures are `cnnlab.core.figures`.
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
from cnnlab.train.run import load_model
from cnnlab.train.rundir import RunWriter
from cnnlab.train.step import StepOutput, TrainStep

__all__ = [
    "RECIPES", "Callback", "EvalResult", "LrFindResult", "NonFiniteLossError", "Prediction", "RunWriter",
    "StepOutput", "TrainConfig", "TrainResult", "TrainStep", "Trainer", "TrainingInterrupted", "evaluate",
    "export", "load_model", "lr_find", "predict", "resolve_config", "train",
]

make_callable(__name__, "train")
