"""KerasTuner hypermodels of a search (with the retraining that scores it) and of a
retraining.

A trial is more than one ``model.fit``, so ``build`` returns the trial's validated
settings (cheap: KerasTuner calls it repeatedly to discover the space) and ``fit`` runs
them in the trial's folder and returns its metrics. ``SWDTuner.run_trial`` calls the two.

Every trial is scored on a validation split set aside from the training split
(``validation``, the same examples in every trial, unseen by the search and the
retraining); the test split is only reported, never optimised.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras_tuner

from swd_keras.tuning.space import SearchSpace

SEARCH_SETTINGS = ("k", "lr", "lr_min", "arch_lr", "momentum", "weight_decay", "grad_clip",
                   "ua_reduction", "la_reduction", "ua_pooling", "la_pooling", "channels",
                   "layers", "epochs", "batch_size", "mode", "method", "upper_attention",
                   "lower_attention", "normalization")
"""The ``SearchConfig`` fields a search hypermodel can tune."""
RETRAIN_SETTINGS = ("channels", "layers", "epochs", "batch_size", "learning_rate",
                    "weight_decay", "momentum", "grad_clip", "drop_path", "auxiliary",
                    "auxiliary_weight", "label_smoothing", "cutout")
"""The ``RetrainConfig`` fields a retraining hypermodel can tune."""
RETRAIN_PREFIX = "retrain."
"""A search hypermodel tunes its trials' retraining as ``retrain.FIELD``."""
VARIANT = "variant"
"""The hyperparameter that picks one of a search hypermodel's named ``variants``."""
HYPERBAND_EPOCHS = "tuner/epochs"
"""Hyperband's per-trial budget; it sets the retraining's epochs."""
DEFAULT_VALIDATION = 0.1


class SearchHyperModel(keras_tuner.HyperModel):
    """Each trial searches cells with its settings, then retrains the genotype it found
    for a short budget and is scored by that network's validation accuracy.

    A trial is a pipeline run without export (``swd_keras.pipeline``) in the trial's
    ``pipeline/`` folder: ``search/`` (genotype.json, the search's record) and ``train/``
    (model.keras, results.json). An interrupted trial continues from its checkpoints
    when KerasTuner runs it again.

    Args:
        dataset: the dataset of every trial (any form ``run_search`` takes).
        space: the tuned settings: a ``SearchSpace`` or its ranges; names are
            ``SEARCH_SETTINGS``, ``seed``, and ``retrain.`` + ``RETRAIN_SETTINGS``.
        search: fixed ``SearchConfig`` fields of every trial (e.g. ``{"epochs": 4}``).
        retrain: fixed ``RetrainConfig`` fields of every trial's retraining: its budget.
        validation: the fraction of the training split set aside to score trials.
        variants: named sets of fixed settings, one per trial as the ``variant``
            hyperparameter picks (the ablation studies' rows).
        seed: the trials' seed, unless the space tunes ``seed``.
        data_dir, image_size, test_dir, holdout: the dataset's options (``run_search``).

    Example:
        >>> hypermodel = SearchHyperModel("digits", {"k": [2, 4], "arch_lr": [1e-3, 1e-2]},
        ...                               search={"epochs": 2}, retrain={"epochs": 5})
        >>> tuner = SWDTuner(hypermodel, make_oracle("random", max_trials=4), "tuning")
        >>> tuner.search()
    """

    def __init__(self, dataset, space: SearchSpace | Mapping[str, Any] | None = None, *,
                 search: Mapping[str, Any] | None = None,
                 retrain: Mapping[str, Any] | None = None,
                 validation: float = DEFAULT_VALIDATION,
                 variants: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0,
                 data_dir: str | None = None, image_size=None, test_dir: str | None = None,
                 holdout: float | None = None):
        super().__init__(name="swd_search")
        self.files = {"genotype": "pipeline/search/genotype.json",
                      "model": "pipeline/train/model.keras"}
        self.space = _as_space(space, (*SEARCH_SETTINGS, "seed",
                                       *(RETRAIN_PREFIX + name for name in RETRAIN_SETTINGS)))
        self.search, self.retrain = dict(search or {}), dict(retrain or {})
        self.variants = {name: dict(values) for name, values in (variants or {}).items()}
        self.seed, self.validation = seed, validation
        self.data = {"data_dir": data_dir, "image_size": image_size, "test_dir": test_dir,
                     "holdout": holdout}
        self.dataset = dataset
        self.check()

    def build(self, hp: keras_tuner.HyperParameters):
        """The trial's ``PipelineConfig`` (validated) from ``hp``'s values."""
        values = self.space.declare(hp)
        if self.variants:
            values[VARIANT] = hp.Choice(VARIANT, list(self.variants))
        if HYPERBAND_EPOCHS in hp.values:
            values[RETRAIN_PREFIX + "epochs"] = hp.values[HYPERBAND_EPOCHS]
        return self.config(values)

    def config(self, values: Mapping[str, Any]):
        """The ``PipelineConfig`` of a trial with these hyperparameter values."""
        from swd_keras.pipeline import pipeline_config

        values = dict(values)
        values.update(self.variants.get(values.pop(VARIANT, None), {}))
        search = {**self.search, **{k: v for k, v in values.items()
                                    if not k.startswith(RETRAIN_PREFIX) and k != "seed"}}
        retrain = {**self.retrain, **{k[len(RETRAIN_PREFIX):]: v for k, v in values.items()
                                      if k.startswith(RETRAIN_PREFIX)}}
        return pipeline_config(self.dataset, seed=values.get("seed", self.seed),
                               search=search, retrain=retrain, validation=self.validation,
                               formats=(), **self.data)

    def check(self) -> None:
        """Builds the config of every combination that covers the space (and every
        variant), so a value that breaks the search's rules is refused before a trial.

        Raises:
            ValueError: naming the values and the rule.
        """
        if not self.variants:
            self.space.check(self.config)
        for variant in self.variants:
            try:
                self.space.check(lambda values, v=variant: self.config({**values, VARIANT: v}))
            except ValueError as error:
                raise ValueError(f"{VARIANT} {variant!r}: {error}") from None

    def fit(self, hp: keras_tuner.HyperParameters, model, trial_dir: str | Path,
            echo: Callable[[str], None] = print, verbose: str | int = 0, **kwargs) -> dict:
        """Runs the trial ``model`` (``build``'s config) in ``trial_dir``.

        Returns:
            The trial's metrics: ``val_accuracy`` (the objective), ``test_accuracy``,
            ``parameters``, ``search_seconds``, ``retrain_seconds`` and
            ``parameter_free_ops`` (over all searched cells).
        """
        from swd_keras.pipeline import run_pipeline

        result = run_pipeline(model, Path(trial_dir) / "pipeline", echo=echo, verbose=verbose)
        return {"val_accuracy": result.results["val_top1"],
                "test_accuracy": result.results["test_top1"],
                "parameters": result.results["parameters"],
                "search_seconds": result.stages["search"]["seconds"],
                "retrain_seconds": result.stages["train"]["seconds"],
                "parameter_free_ops": sum(result.stages["search"]["parameter_free"])}

    def to_json(self) -> dict[str, Any]:
        """What defines the project's trials, for a resumed project to compare."""
        from swd_keras.data.sources import recorded

        return {"hypermodel": self.name, "dataset": recorded(self.dataset),
                "space": self.space.to_json(), "search": self.search,
                "retrain": self.retrain, "validation": self.validation,
                "variants": self.variants, "seed": self.seed, "data": self.data}


class RetrainHyperModel(keras_tuner.HyperModel):
    """Each trial retrains one fixed genotype with its settings and is scored by the
    network's validation accuracy: for users who have their cells and want the network's
    size and training settings.

    Args:
        genotype: a built-in name or a genotype JSON path.
        dataset: the dataset (any form ``fit_network`` takes).
        space: the tuned settings: a ``SearchSpace`` or its ranges; names are
            ``RETRAIN_SETTINGS`` and ``seed``.
        retrain: fixed ``RetrainConfig`` fields of every trial.
        validation: the fraction of the training split set aside to score trials.
        seed: the trials' seed, unless the space tunes ``seed``.
        data_dir: tensorflow-datasets folder.
        image_size, test_dir, holdout: a user's dataset's options (``RetrainConfig``).

    Example:
        >>> hypermodel = RetrainHyperModel("swd_nas_paper", "digits",
        ...                                {"channels": [8, 16], "drop_path": [0.0, 0.2]},
        ...                                retrain={"epochs": 10, "layers": 8})
    """

    def __init__(self, genotype: str, dataset,
                 space: SearchSpace | Mapping[str, Any] | None = None, *,
                 retrain: Mapping[str, Any] | None = None,
                 validation: float = DEFAULT_VALIDATION, seed: int = 0,
                 data_dir: str | None = None, image_size=None, test_dir: str | None = None,
                 holdout: float | None = None):
        super().__init__(name="swd_retrain")
        self.files = {"model": "train/model.keras"}
        self.space = _as_space(space, (*RETRAIN_SETTINGS, "seed"))
        self.genotype, self.dataset, self.retrain = genotype, dataset, dict(retrain or {})
        self.validation, self.seed, self.data_dir = validation, seed, data_dir
        self.data = {"image_size": image_size, "test_dir": test_dir, "holdout": holdout}
        self.check()

    def build(self, hp: keras_tuner.HyperParameters):
        """The trial's ``RetrainConfig`` (validated) from ``hp``'s values."""
        values = self.space.declare(hp)
        if HYPERBAND_EPOCHS in hp.values:
            values["epochs"] = hp.values[HYPERBAND_EPOCHS]
        return self.config(values)

    def config(self, values: Mapping[str, Any]):
        """The ``RetrainConfig`` of a trial with these hyperparameter values."""
        from swd_keras.genotype import get_genotype
        from swd_keras.network import stacking_plan
        from swd_keras.pipeline import PIPELINE_DEFAULTS
        from swd_keras.training import RetrainConfig, retrain_defaults

        small = PIPELINE_DEFAULTS.get(self.dataset, {}).get("retrain", {})
        settings = {**retrain_defaults(self.dataset), **small, "seed": self.seed,
                    **self.retrain, **values}
        config = RetrainConfig(self.genotype, self.dataset, validation=self.validation,
                               **self.data, **settings)
        stacking_plan(get_genotype(config.genotype), config.layers)
        return config

    def check(self) -> None:
        """As ``SearchHyperModel.check``."""
        self.space.check(self.config)

    def fit(self, hp: keras_tuner.HyperParameters, model, trial_dir: str | Path,
            echo: Callable[[str], None] = print, verbose: str | int = 0, **kwargs) -> dict:
        """Retrains ``model`` (``build``'s config) in ``trial_dir/train``.

        Returns:
            ``val_accuracy`` (the objective), ``test_accuracy``, ``parameters`` and
            ``retrain_seconds``.
        """
        from swd_keras.runs import is_run_folder
        from swd_keras.training import fit_network

        folder, started = Path(trial_dir) / "train", time.time()
        resume = is_run_folder(folder, "retrain")
        if folder.exists() and not resume:
            # Left by an attempt killed before its record was written: nothing to resume.
            shutil.rmtree(folder)
        results = fit_network(folder, None if resume else model, resume=resume,
                              data_dir=self.data_dir, verbose=verbose)
        return {"val_accuracy": results["val_top1"], "test_accuracy": results["test_top1"],
                "parameters": results["parameters"],
                "retrain_seconds": round(time.time() - started, 1)}

    def to_json(self) -> dict[str, Any]:
        """What defines the project's trials, for a resumed project to compare."""
        from swd_keras.data.sources import recorded

        return {"hypermodel": self.name, "genotype": self.genotype,
                "dataset": recorded(self.dataset), "space": self.space.to_json(),
                "retrain": self.retrain, "validation": self.validation, "seed": self.seed,
                "data": {"data_dir": self.data_dir, **self.data}}


def _as_space(space, allowed: tuple[str, ...]) -> SearchSpace:
    """``space`` checked against this hypermodel's settings."""
    return SearchSpace(space.to_json() if isinstance(space, SearchSpace) else space or {},
                       allowed)
