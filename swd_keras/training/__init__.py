"""Retraining a genotype's network (SPEC §5).

The pieces follow DARTS' ``train.py``: SGD with momentum and PyTorch's (coupled) weight
decay, gradient clipping by global norm, a cosine learning rate stepped once per epoch
(``compile``), drop path ramped linearly over the epochs (``drop_path``), an auxiliary
loss weighted 0.4, and the test accuracy measured once, after the last epoch
(``evaluation``). ``config`` holds the settings, ``job`` the resumable ``fit_network``.
"""

from swd_keras.runs import CONFIG_FILE, HISTORY_FILE
from swd_keras.training.compile import (
    LabelSmoothingCrossentropy,
    compile_network,
    make_optimizer,
    with_auxiliary_targets,
)
from swd_keras.training.config import (
    MODEL_FILE,
    RESULTS_FILE,
    TENSORBOARD_DIR,
    RetrainConfig,
    raw_pixel_max,
    read_run_config,
    retrain_defaults,
)
from swd_keras.training.drop_path import DropPathSchedule, set_drop_path_rate
from swd_keras.training.evaluation import evaluate_network
from swd_keras.training.job import TrainingDivergedError, fit_network, save_model

__all__ = [
    "CONFIG_FILE", "HISTORY_FILE", "MODEL_FILE", "RESULTS_FILE", "TENSORBOARD_DIR",
    "DropPathSchedule", "LabelSmoothingCrossentropy", "RetrainConfig", "TrainingDivergedError",
    "compile_network", "evaluate_network", "fit_network", "make_optimizer", "raw_pixel_max",
    "read_run_config", "retrain_defaults", "save_model", "set_drop_path_rate",
    "with_auxiliary_targets",
]
