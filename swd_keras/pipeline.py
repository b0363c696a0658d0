"""The whole pipeline in one run folder: search cells, retrain the genotype, export it.

``run_pipeline`` chains the three library stages and records which ones finished::

    RUN_DIR/
        pipeline.json                 settings, backend, the finished stages (atomic)
        search/                       the search run (``swd_keras.search_job``)
        train/                        the retraining run (``swd_keras.training``)
        savedmodels/NAME/VERSION/     the verified SavedModel (``swd_keras.export``)

Every stage is resumable: calling ``run_pipeline`` again on the folder skips the stages
``pipeline.json`` lists as finished and continues the unfinished one from its last
checkpoint (the search from its last completed epoch, the retraining likewise; an export
is redone whole, it takes seconds). Each stage writes its files atomically, and a stage
is marked finished only after its outputs are in place, so a run killed at any moment
loses at most the epoch in progress.

Defaults are the paper's (search: 30 epochs, C=16, 5 cells; retraining: 600 epochs,
C=36, 20 cells, SPEC §5) except on the small in-memory datasets (``PIPELINE_DEFAULTS``),
where they are sized to finish in minutes on a CPU.

Example:
    >>> config = pipeline_config("digits")
    >>> result = run_pipeline(config, "runs/pipeline-digits")
    >>> result.results["test_top1"], result.export_path
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from swd_keras.data.names import label
from swd_keras.data.run_config import DATA_FIELDS
from swd_keras.distribute import check_devices, is_chief, replica_count
from swd_keras.genotype import CellGenotype, Genotype, default_reduction_indices
from swd_keras.network import stacking_plan
from swd_keras.runs import (
    RunConfig,
    atomic_write_json,
    check_backend,
    completed_epochs,
    is_run_folder,
)
from swd_keras.search_job import SearchConfig, collapse_report, run_search
from swd_keras.training import (
    MODEL_FILE,
    RESULTS_FILE,
    RetrainConfig,
    fit_network,
    retrain_defaults,
)

PIPELINE_FILE = "pipeline.json"
PIPELINE_FORMAT = "swd-keras/pipeline@1"
STAGES: tuple[str, ...] = ("search", "train", "export")
SEARCH_DIR, TRAIN_DIR, EXPORT_DIR = "search", "train", "savedmodels"
SEARCHED_GENOTYPE = f"{SEARCH_DIR}/genotype.json"
"""Where the search writes its genotype, relative to the run folder; the retraining
config's ``genotype`` field holds this path."""

_SMALL_DATASET = {
    "search": {"epochs": 8},
    "retrain": {"epochs": 50, "batch_size": 64, "channels": 16, "layers": 8},
}
PIPELINE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "digits": _SMALL_DATASET,
    "synthetic": _SMALL_DATASET,
}
"""Per-dataset settings that replace the paper's defaults (``SearchConfig`` and
``retrain_defaults`` field names). Digits (1,797 8x8 images) and the synthetic set are far
smaller than CIFAR: the paper's 600-epoch, 20-cell, C=36 retraining would take days on a
CPU and gains nothing there. The search keeps the paper's supernet (C=16, 5 cells) for
8 epochs; the retraining uses 8 cells of C=16 (6/1/6/1/6 becomes 2/1/2/1/2) for 50 epochs
at batch 64."""

# Fields the pipeline sets itself, one value for both stages (or, for the retraining's
# genotype, the search's output).
_PIPELINE_FIELDS = {"search": (*DATA_FIELDS, "data_dir", "seed"),
                    "retrain": (*DATA_FIELDS, "seed", "genotype")}


@dataclasses.dataclass(frozen=True)
class PipelineConfig(RunConfig):
    """The settings of a pipeline run: one per stage, validated when made.

    Args:
        search: the search settings (``SearchConfig``); its ``dataset``, ``data_dir``
            and ``seed`` are the pipeline's.
        retrain: the retraining settings (``RetrainConfig``); ``genotype`` is
            ``SEARCHED_GENOTYPE`` (the search's output), ``dataset`` and ``seed`` are the
            search's.
        name: the exported model's name (TF Serving's ``MODEL_NAME``).
        version: the exported version folder number.
        formats: the export's formats (``swd_keras.export.FORMATS``: ``saved_model``,
            ``onnx``, ``tflite``), all in one version folder; empty: no export stage
            (a tuning trial's pipeline, ``swd_keras.tuning``).

    Build one with ``pipeline_config``; every other setting can be changed with
    ``dataclasses.replace(config.search, ...)`` / ``(config.retrain, ...)``.
    """

    search: SearchConfig
    retrain: RetrainConfig
    name: str
    version: int = 1
    formats: tuple[str, ...] = ("saved_model",)

    @property
    def dataset(self) -> str:
        """The dataset both stages use."""
        return self.search.dataset

    def validate(self) -> PipelineConfig:
        """Raises a ValueError naming the first bad setting; returns self.

        Beyond each stage's own checks: both stages use the same dataset and seed, the
        retraining trains the searched genotype, the searched cells stack into the
        retraining network's ``layers`` (checked before hours of searching), and the
        export name and version are valid folder names.
        """
        from swd_keras.export import format_names

        # JSON gives a list; a tuple keeps the config hashable.
        object.__setattr__(self, "formats",
                           format_names(self.formats) if self.formats else ())
        self.search.validate()
        if self.retrain.genotype != SEARCHED_GENOTYPE:
            raise ValueError(f"retrain.genotype must be {SEARCHED_GENOTYPE!r} (the pipeline "
                             f"retrains its own search's genotype), got {self.retrain.genotype!r}.")
        for field in (*DATA_FIELDS, "seed"):
            if getattr(self.retrain, field) != getattr(self.search, field):
                raise ValueError(f"retrain.{field} ({getattr(self.retrain, field)!r}) must equal "
                                 f"search.{field} ({getattr(self.search, field)!r}).")
        try:
            stacking_plan(_searched_layout(self.search), self.retrain.layers)
        except ValueError as error:
            raise ValueError(f"the search's {self.search.layers} cells cannot be retrained as "
                             f"{self.retrain.layers} layers: {error}") from None
        if not self.name or Path(self.name).name != self.name or self.name.startswith("."):
            raise ValueError(f"name must be a plain folder name, got {self.name!r}.")
        if isinstance(self.version, bool) or not isinstance(self.version, int) \
                or self.version < 1:
            raise ValueError(f"version must be a positive integer, got {self.version!r}.")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"search": self.search.to_json(), "retrain": self.retrain.to_json(),
                "name": self.name, "version": self.version, "formats": list(self.formats)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PipelineConfig:
        return cls(SearchConfig.from_json(data["search"]),
                   RetrainConfig.from_json(data["retrain"]), data["name"], data["version"],
                   data.get("formats", ("saved_model",)))


def _searched_layout(search: SearchConfig) -> Genotype:
    """A genotype with the cell types the search will produce (which operations fill the
    cells does not matter for stacking): ``SWDSearchModel.genotype``'s layout."""
    if search.method == "darts":
        types = ["normal", "reduce"]
    else:
        reductions = default_reduction_indices(search.layers)
        types = ["reduce" if i in reductions else "normal" for i in range(search.layers)]
    edges = [("skip_connect", 0), ("skip_connect", 1)] * 4
    return Genotype(tuple(CellGenotype(cell_type, edges) for cell_type in types))


def pipeline_config(dataset, *, seed: int = 0, data_dir: str | None = None,
                    search: dict[str, Any] | None = None,
                    retrain: dict[str, Any] | None = None, name: str | None = None,
                    version: int = 1, image_size: tuple[int, int] | None = None,
                    test_dir: str | None = None, holdout: float | None = None,
                    validation: float = 0.0,
                    formats: str | tuple[str, ...] = ("saved_model",)) -> PipelineConfig:
    """The pipeline settings for ``dataset``: its defaults, updated by the given ones.

    Args:
        dataset: a built-in name (``swd_keras.data.DATASETS``), ``tfds:NAME``, an image
            folder, an ``.npz`` file or an ``ArrayDataset`` (``swd_keras.data.sources.FORMS``).
        seed: seed of both stages.
        data_dir: tensorflow-datasets folder for both stages.
        search: ``SearchConfig`` fields to change (e.g. ``{"epochs": 2, "limit": 64}``).
        retrain: ``RetrainConfig`` fields to change (e.g. ``{"epochs": 5, "layers": 5}``).
        name: the exported model's name [default: ``swd_nas_`` and the dataset's short
            name, ``swd_keras.data.sources.label``].
        version: the exported version number.
        image_size: ``(height, width)`` a user's images are resized to, both stages.
        test_dir: an image folder's test folder, both stages.
        holdout: the fraction held out where a user's dataset has no test split.
        validation: the fraction of the training split both stages leave out; the
            retraining is then scored on it (``val_top1``) besides the test split.
        formats: the export's formats (``saved_model``, ``onnx``, ``tflite``); empty for
            no export.

    Returns:
        The validated ``PipelineConfig``. The defaults are the paper's (``SearchConfig``;
        ``retrain_defaults``) with ``PIPELINE_DEFAULTS[dataset]`` on top.

    Raises:
        ValueError: an unknown field, a field the pipeline sets itself (dataset, seed,
            data_dir, the retraining genotype), or an invalid value.

    Example:
        >>> config = pipeline_config("digits", search={"epochs": 2}, retrain={"epochs": 5})
    """
    defaults = PIPELINE_DEFAULTS.get(dataset, {})
    stages = {}
    for stage, given, config_class in (("search", search, SearchConfig),
                                       ("retrain", retrain, RetrainConfig)):
        given = dict(given or {})
        fields = {f.name for f in dataclasses.fields(config_class)}
        for key in given:
            if key in _PIPELINE_FIELDS[stage]:
                raise ValueError(f"{stage}[{key!r}] is set by the pipeline; pass "
                                 f"{'it as an argument' if key != 'genotype' else 'no genotype'}.")
            if key not in fields:
                raise ValueError(f"{stage}[{key!r}] is not a {config_class.__name__} field; "
                                 f"allowed: {sorted(fields - set(_PIPELINE_FIELDS[stage]))}.")
        stages[stage] = {**defaults.get(stage, {}), **given}
    data = {"dataset": dataset, "image_size": image_size, "test_dir": test_dir,
            "holdout": holdout, "validation": validation}
    search_config = SearchConfig(**data, data_dir=data_dir, seed=seed, **stages["search"])
    paper = {key: value for key, value in retrain_defaults(dataset).items()
             if key not in stages["retrain"]}
    retrain_config = RetrainConfig(SEARCHED_GENOTYPE, **_resolved(search_config),
                                   seed=seed, **paper, **stages["retrain"])
    return PipelineConfig(search_config, retrain_config,
                          name or f"swd_nas_{label(dataset).replace('-', '_')}", version,
                          (formats,) if isinstance(formats, str) else tuple(formats))


def _resolved(search: SearchConfig) -> dict[str, Any]:
    """The search's dataset settings as it normalised them (absolute paths), for the
    retraining to equal them."""
    return {field: getattr(search, field) for field in DATA_FIELDS}


# -- the state file ---------------------------------------------------------------------

def is_pipeline_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a pipeline run (its ``pipeline.json``)."""
    return (Path(path) / PIPELINE_FILE).is_file()


def read_pipeline_state(run_dir: str | Path) -> dict[str, Any]:
    """The parsed ``pipeline.json`` of a run folder.

    Returns:
        ``{"format", "backend", "config", "finished": {stage: record}}``.

    Raises:
        ValueError: no ``pipeline.json``, or not a pipeline's.
    """
    path = Path(run_dir) / PIPELINE_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a pipeline run folder (no {PIPELINE_FILE}).")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read ({error}).") from None
    if not isinstance(state, dict) or state.get("format") != PIPELINE_FORMAT:
        raise ValueError(f"{path}: not a pipeline state file (format {PIPELINE_FORMAT!r}).")
    return state


def _settings_differ(stored: dict, given: dict, prefix: str = "") -> list[str]:
    """``"key: stored -> given"`` for every setting that differs (nested keys dotted)."""
    found = []
    for key in dict.fromkeys([*stored, *given]):
        old, new = stored.get(key), given.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += _settings_differ(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return found


def _start(run_dir: Path, config: PipelineConfig, overwrite: bool,
           echo: Callable[[str], None]) -> dict[str, Any]:
    """The state of a new run in ``run_dir``, or of the run it holds with these settings."""
    if is_pipeline_folder(run_dir):
        state = read_pipeline_state(run_dir)
        # Through the config classes, so that fields added since the run started count
        # at their defaults.
        stored = PipelineConfig.from_json(state["config"]).to_json()
        differ = _settings_differ(stored, config.to_json())
        if not overwrite:
            if differ:
                shown = "; ".join(differ[:3]) + ("; ..." if len(differ) > 3 else "")
                raise ValueError(
                    f"{run_dir} holds a pipeline run with other settings ({shown}): continue "
                    f"it with resume=True (--resume), start it over with overwrite=True "
                    f"(--overwrite), or choose another output folder.")
            echo(f"{run_dir} holds this pipeline already: continuing it.")
            return state
        echo(f"{run_dir}: starting over (overwrite).")
        if is_chief():
            shutil.rmtree(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"{run_dir} exists and is not a pipeline run folder; choose another "
                         f"output folder.")
    state = {"format": PIPELINE_FORMAT, "backend": keras.backend.backend(),
             "config": config.to_json(), "finished": {}}
    if is_chief():
        atomic_write_json(run_dir / PIPELINE_FILE, state)
    return state


def _finish(run_dir: Path, state: dict[str, Any], stage: str, record: dict[str, Any]) -> None:
    state["finished"][stage] = record
    if is_chief():
        atomic_write_json(run_dir / PIPELINE_FILE, state)


# -- the run ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PipelineResult:
    """What a finished pipeline produced.

    Attributes:
        run_dir: the run folder.
        genotype: the searched genotype (``run_dir/search/genotype.json``).
        results: the retraining results (``run_dir/train/results.json``: ``test_top1``,
            ``test_examples``, ``parameters``, ...).
        export_path: the verified export's version folder (None without formats).
        stages: each stage's record in ``pipeline.json`` (seconds, outputs, checks).
        skipped: the stages an earlier call had finished, which this one skipped.
    """

    run_dir: Path
    genotype: Genotype
    results: dict[str, Any]
    export_path: Path | None
    stages: dict[str, dict[str, Any]]
    skipped: tuple[str, ...]


def run_pipeline(config: PipelineConfig | None = None, run_dir: str | Path = "runs/pipeline",
                 *, resume: bool = False, overwrite: bool = False,
                 echo: Callable[[str], None] = print,
                 verbose: str | int = "auto",
                 devices: str | int | None = None) -> PipelineResult:
    """Searches, retrains the searched genotype and exports it, in one run folder.

    A new run in a folder that already holds a pipeline with the same settings continues
    it (as ``resume=True`` does); with other settings it is refused unless ``overwrite``.

    Args:
        config: the settings (``pipeline_config``); None with ``resume``.
        run_dir: the run folder.
        resume: continue the run in ``run_dir`` with its stored settings: finished stages
            are skipped, the unfinished one continues from its last checkpoint.
        overwrite: delete the pipeline run ``run_dir`` holds and start over (only a
            pipeline run folder is ever deleted).
        echo: where progress lines go.
        verbose: Keras' progress-bar verbosity for the search and the retraining.
        devices: replaces both stages' ``devices`` for this call (``"all"`` or a count);
            None keeps theirs (a resumed run: the recorded ones). Every process runs the
            stages; only the chief writes the run folder and exports.

    Returns:
        A ``PipelineResult``.

    Raises:
        ValueError: invalid settings, a folder that holds something else, a resume on
            another backend than the run started on, a backend the export cannot run
            on, devices that do not exist or a batch that does not split over them
            (checked before the search starts), unavailable data.
        swd_keras.search_job.SearchDiverged, swd_keras.training.TrainingDivergedError:
            a stage's loss became NaN/inf (its last good checkpoint is kept).
        swd_keras.export.ExportError: the SavedModel failed its verification.
    """
    from swd_keras.export import ExportError, check_formats

    run_dir = Path(run_dir)
    if resume:
        if config is not None or overwrite:
            raise ValueError("resume=True takes the settings from the run folder; pass "
                             "neither config nor overwrite.")
        state = read_pipeline_state(run_dir)
        config = PipelineConfig.from_json(state["config"])
    else:
        if config is None:
            raise ValueError("config is required for a new run (see pipeline_config).")
    if devices is not None:
        devices = check_devices(devices)
    for stage in (config.search, config.retrain):
        replica_count(devices or stage.devices, stage.batch_size)
    try:
        if config.formats:
            check_formats(config.formats)
    except ExportError as error:
        raise ValueError(f"the export stage cannot run here: {error}") from None
    created = not resume and not run_dir.exists()
    if not resume:
        state = _start(run_dir, config, overwrite, echo)
    check_backend(state["backend"], run_dir)

    skipped = tuple(stage for stage in STAGES if stage in state["finished"])
    if skipped:
        echo(f"finished before, skipped: {', '.join(skipped)}")
    try:
        genotype = _search_stage(run_dir, config, state, echo, verbose, devices)
    except BaseException:
        # A new run whose search wrote nothing (its data did not load) leaves no folder
        # that --resume would take for a run.
        if created and not (run_dir / SEARCH_DIR).exists() and is_chief():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    results = _train_stage(run_dir, config, state, echo, verbose, devices)
    export_path = _export_stage(run_dir, config, state, echo)
    return PipelineResult(run_dir, genotype, results, export_path, dict(state["finished"]),
                          skipped)


def _stage_count(config: PipelineConfig) -> int:
    """The stages a run has: no export without formats."""
    return len(STAGES) if config.formats else len(STAGES) - 1


def _search_stage(run_dir: Path, config: PipelineConfig, state: dict,
                  echo: Callable[[str], None], verbose, devices) -> Genotype:
    if "search" in state["finished"]:
        return Genotype.load(run_dir / SEARCHED_GENOTYPE)
    folder, started = run_dir / SEARCH_DIR, time.time()
    resuming = is_run_folder(folder)
    echo(f"== stage 1/{_stage_count(config)}: search "
         f"({'resumed from its last checkpoint' if resuming else 'new'}), {folder}")
    result = run_search(None if resuming else config.search, folder, resume=resuming,
                        echo=echo, verbose=verbose, devices=devices)
    echo(f"genotype:\n{result.genotype}\n{collapse_report(result.genotype)}")
    _finish(run_dir, state, "search", {
        "genotype": SEARCHED_GENOTYPE, "epochs": len(result.history),
        "parameter_free": list(result.genotype.parameter_free_counts()),
        "seconds": round(time.time() - started, 1)})
    return result.genotype


def _train_stage(run_dir: Path, config: PipelineConfig, state: dict,
                 echo: Callable[[str], None], verbose, devices) -> dict[str, Any]:
    folder = run_dir / TRAIN_DIR
    if "train" in state["finished"]:
        return json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
    started = time.time()
    resuming = is_run_folder(folder)
    if resuming:
        done = completed_epochs(folder)
        echo(f"== stage 2/{_stage_count(config)}: retrain (resumed after epoch {done} of "
             f"{config.retrain.epochs}), {folder}")
        retrain = None
    else:
        # fit_network writes config.json before its first epoch: a folder without it was
        # left by a start killed before then and holds nothing to resume.
        if folder.exists() and is_chief():
            shutil.rmtree(folder)
        echo(f"== stage 2/{_stage_count(config)}: retrain ({config.retrain.layers} cells, "
             f"C={config.retrain.channels}, {config.retrain.epochs} epochs), {folder}")
        retrain = dataclasses.replace(config.retrain, genotype=str(run_dir / SEARCHED_GENOTYPE))
    results = fit_network(folder, retrain, resume=resuming, data_dir=config.search.data_dir,
                          verbose=verbose, devices=devices)
    echo(f"test top-1 accuracy: {100 * results['test_top1']:.2f}% "
         f"({results['test_examples']} test images); parameters: {results['parameters']:,}")
    _finish(run_dir, state, "train", {
        "model": f"{TRAIN_DIR}/{MODEL_FILE}", "test_top1": results["test_top1"],
        "test_examples": results["test_examples"], "parameters": results["parameters"],
        "seconds": round(time.time() - started, 1)})
    return results


def _export_stage(run_dir: Path, config: PipelineConfig, state: dict,
                  echo: Callable[[str], None]) -> Path | None:
    from swd_keras.export import export_model, serving_instructions

    if not config.formats:
        return None
    relative = Path(EXPORT_DIR) / config.name / str(config.version)
    if "export" not in state["finished"] and is_chief():
        started = time.time()
        echo(f"== stage 3/3: export and verify, {run_dir / relative}")
        # A target already there was moved into place, verified, by an export killed
        # before it could be recorded: this pipeline's own output, so it is replaced.
        exported = export_model(run_dir / TRAIN_DIR / MODEL_FILE, config.formats,
                                run_dir / EXPORT_DIR, name=config.name,
                                version=config.version, overwrite=True, verbose=False)
        echo(f"{', '.join(config.formats)}: each served from a separate Python process, "
             f"outputs match the Keras model (max |difference| "
             f"{exported.max_abs_diff:.2e}).")
        _finish(run_dir, state, "export", {
            "path": relative.as_posix(), "formats": list(config.formats), "verified": True,
            "max_abs_diff": exported.max_abs_diff, "batch_sizes": list(exported.batch_sizes),
            "seconds": round(time.time() - started, 1)})
    echo(serving_instructions(run_dir / relative, config.name))
    return run_dir / relative
