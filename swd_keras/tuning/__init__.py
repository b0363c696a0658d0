"""Tuning with KerasTuner: search and retraining hypermodels, their tuner, the paper's
ablation studies.

``SearchHyperModel`` (a search, then a short retraining that scores it) and
``RetrainHyperModel`` (a fixed genotype's network) are ``keras_tuner.HyperModel``s;
``SWDTuner`` is a ``keras_tuner.Tuner`` that runs their trials under any KerasTuner
oracle (``make_oracle``), resumes a project and spreads trials over KerasTuner's chief and
workers. ``run_ablation`` runs the paper's Tables III-IV and Fig. 4 as fixed grids.
"""

from swd_keras.tuning.ablation import STUDIES, AblationResult, run_ablation
from swd_keras.tuning.hypermodels import (
    RETRAIN_SETTINGS,
    SEARCH_SETTINGS,
    RetrainHyperModel,
    SearchHyperModel,
)
from swd_keras.tuning.space import SearchSpace
from swd_keras.tuning.tuner import (
    OBJECTIVE,
    ORACLES,
    SWDTuner,
    TrialRecord,
    make_oracle,
    summary_table,
)

__all__ = ["OBJECTIVE", "ORACLES", "RETRAIN_SETTINGS", "SEARCH_SETTINGS", "STUDIES",
           "AblationResult", "RetrainHyperModel", "SWDTuner", "SearchHyperModel",
           "SearchSpace", "TrialRecord", "make_oracle", "run_ablation", "summary_table"]
