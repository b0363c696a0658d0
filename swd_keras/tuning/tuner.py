"""``SWDTuner``: a KerasTuner ``Tuner`` whose trials are searches and retrainings.

The project folder is KerasTuner's (``DIRECTORY/PROJECT/``: ``oracle.json``, one
``trial_ID/`` per trial with its ``trial.json``) plus ``swd_tuning.json``, what defines
the project's trials. Running the same project again (``overwrite=False``) reloads the
oracle: finished trials are kept, and a trial that was running when the process stopped
runs again under its own id, continuing its search or retraining from its checkpoints.

Distributed tuning is KerasTuner's: with ``KERASTUNER_TUNER_ID``,
``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` set, the process whose id
contains ``chief`` serves the oracle and the others run one trial at a time each
(``swd_keras.tuning.distributed``, docs/SCALE.md).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras_tuner

from swd_keras.tuning import distributed

OBJECTIVE = keras_tuner.Objective("val_accuracy", direction="max")
"""Every trial's objective: the retrained network's accuracy on the validation split."""
ORACLES = ("random", "bayesian", "hyperband", "grid")
PROJECT_FILE = "swd_tuning.json"
PROJECT_FORMAT = "swd-keras/tuning@1"


def make_oracle(name: str, max_trials: int, *, seed: int | None = 0,
                max_epochs: int | None = None,
                objective: keras_tuner.Objective = OBJECTIVE) -> keras_tuner.Oracle:
    """A KerasTuner oracle by name, maximising ``objective``.

    Args:
        name: ``random``, ``bayesian``, ``hyperband`` or ``grid``.
        max_trials: the most trials it creates (Hyperband: the most retraining epochs of
            one trial, ``max_epochs``, unless given; it plans its own trial count).
        seed: its random seed.
        max_epochs: Hyperband's largest per-trial budget (retraining epochs).
        objective: what it maximises or minimises.

    Raises:
        ValueError: an unknown name or a bad count.
    """
    if name not in ORACLES:
        raise ValueError(f"oracle must be one of {', '.join(ORACLES)}, got {name!r}.")
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ValueError(f"max_trials must be a positive integer, got {max_trials!r}.")
    oracles = keras_tuner.oracles
    if name == "hyperband":
        return oracles.HyperbandOracle(objective, max_epochs=max_epochs or max_trials,
                                       seed=seed)
    oracle_class = {"random": oracles.RandomSearchOracle,
                    "bayesian": oracles.BayesianOptimizationOracle,
                    "grid": oracles.GridSearchOracle}[name]
    return oracle_class(objective, max_trials=max_trials, seed=seed)


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One trial of a project, as ``SWDTuner.records`` reads it.

    Attributes:
        trial_id: KerasTuner's id (its folder is ``trial_ID``).
        status: ``COMPLETED``, ``RUNNING``, ``FAILED``, ``INVALID``, ...
        hyperparameters: the trial's values.
        metrics: its metrics (``val_accuracy``, ``test_accuracy``, ``parameters``,
            ``search_seconds``, ``retrain_seconds``, ``parameter_free_ops``), the ones
            it finished.
        folder: the trial's folder.
        genotype: its searched genotype file, if there is one.
        model: its retrained ``model.keras``, if there is one.
    """

    trial_id: str
    status: str
    hyperparameters: dict[str, Any]
    metrics: dict[str, float]
    folder: Path
    genotype: Path | None
    model: Path | None


class SWDTuner(keras_tuner.Tuner):
    """Runs a ``SearchHyperModel``'s or ``RetrainHyperModel``'s trials and records them.

    Args:
        hypermodel: the ``SearchHyperModel`` or ``RetrainHyperModel``.
        oracle: any KerasTuner oracle (``make_oracle``) whose objective the trials report
            (``OBJECTIVE``).
        directory: the folder that holds projects.
        project_name: the project's folder name.
        overwrite: delete the project (only a tuning project's folder) and start over;
            otherwise a project with the same trials' definition is continued and one
            with another is refused.
        echo: where the trials' progress lines go.
        verbose: Keras' progress-bar verbosity inside a trial.
        chief_timeout: on a distributed worker, the seconds to wait for the chief.

    Raises:
        ValueError: the project holds other trials (without ``overwrite``), or, on a
            worker, its chief cannot be reached (``distributed.wait_for_chief``).

    Example:
        >>> tuner = SWDTuner(SearchHyperModel("digits", {"k": [2, 4]}),
        ...                  make_oracle("grid", max_trials=2), "tuning", "k")
        >>> tuner.search()
        >>> print(summary_table(tuner.records()))
    """

    def __init__(self, hypermodel, oracle: keras_tuner.Oracle, directory: str | Path,
                 project_name: str = "tuning", *, overwrite: bool = False,
                 echo: Callable[[str], None] = print, verbose: str | int = 0,
                 chief_timeout: float = distributed.DEFAULT_CHIEF_TIMEOUT):
        from swd_keras.runs import atomic_write_json

        self.echo, self.verbose = echo, verbose
        project = Path(directory) / project_name
        definition = {"format": PROJECT_FORMAT, **hypermodel.to_json()}
        if distributed.is_worker():
            distributed.wait_for_chief(chief_timeout)
        else:
            if _check_project(project, definition, overwrite):
                shutil.rmtree(project)
            # Before KerasTuner writes anything, so that every folder it fills is marked.
            atomic_write_json(project / PROJECT_FILE, definition)
        super().__init__(oracle, hypermodel, directory=str(directory),
                         project_name=project_name)

    def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
        """Builds the trial's settings and runs them in its folder; returns its metrics."""
        hp = trial.hyperparameters
        shown = ", ".join(f"{name}={value}" for name, value in hp.values.items())
        self.echo(f"== trial {trial.trial_id}: {shown or 'the defaults'}")
        return self.hypermodel.fit(hp, self.hypermodel.build(hp),
                                   self.get_trial_dir(trial.trial_id), echo=self.echo,
                                   verbose=self.verbose)

    def save_model(self, trial_id, model, step=0) -> None:
        """Nothing to do: a trial's folder already holds its ``train/model.keras``."""

    def load_model(self, trial):
        """The trial's retrained network (its inference model)."""
        from swd_keras.network import load_network

        path = self._trial_file(trial.trial_id, "model")
        if path is None:
            raise ValueError(f"trial {trial.trial_id} has no retrained model.")
        return load_network(path)

    def records(self) -> list[TrialRecord]:
        """Every trial of the project, best first (by the objective), then unfinished."""
        trials = list(self.oracle.trials.values())
        best = [t.trial_id for t in self.oracle.get_best_trials(len(trials))]
        order = {trial_id: rank for rank, trial_id in enumerate(best)}
        trials.sort(key=lambda t: (order.get(t.trial_id, len(order)), t.trial_id))
        return [TrialRecord(
            trial.trial_id, str(trial.status), dict(trial.hyperparameters.values),
            {name: value for name in trial.metrics.metrics
             if (value := trial.metrics.get_best_value(name)) is not None},
            Path(self.get_trial_dir(trial.trial_id)),
            self._trial_file(trial.trial_id, "genotype"),
            self._trial_file(trial.trial_id, "model")) for trial in trials]

    def _trial_file(self, trial_id: str, kind: str) -> Path | None:
        """The trial's ``genotype`` or ``model`` file (the hypermodel's ``files``), if
        it has been written."""
        if kind not in self.hypermodel.files:
            return None
        path = Path(self.get_trial_dir(trial_id)) / self.hypermodel.files[kind]
        return path if path.is_file() else None


def _check_project(project: Path, definition: dict[str, Any], overwrite: bool) -> bool:
    """Whether ``project`` holds a tuning project to delete first (``overwrite``);
    refuses a folder that is not a tuning project, and one whose trials were defined
    otherwise unless ``overwrite``."""
    path = project / PROJECT_FILE
    if not path.is_file():
        if project.exists() and any(project.iterdir()):
            raise ValueError(f"{project} exists and is not a swd-keras tuning project; "
                             f"choose another project folder.")
        return False
    if overwrite:
        return True
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read ({error}).") from None
    given = json.loads(json.dumps(definition))  # tuples as lists, as stored
    differ = [key for key in dict.fromkeys([*stored, *given])
              if stored.get(key) != given.get(key)]
    if differ:
        raise ValueError(f"{project} holds a tuning project with other settings "
                         f"({', '.join(differ)}): continue it with the same settings, start "
                         f"it over with overwrite=True (--overwrite), or choose another "
                         f"project.")
    return False


def summary_table(records: list[TrialRecord], limit: int | None = None) -> str:
    """The trials as a Markdown table: rank, id, status, validation and test accuracy,
    parameters, search seconds, parameter-free ops, the hyperparameters and the files."""
    header = ["rank", "trial", "status", "val acc", "test acc", "params", "search s",
              "param-free ops", "hyperparameters", "genotype", "model"]
    rows = []
    for rank, record in enumerate(records[:limit] if limit else records, 1):
        metrics = record.metrics
        rows.append([
            str(rank) if "val_accuracy" in metrics else "-", record.trial_id,
            record.status.lower(), _percent(metrics.get("val_accuracy")),
            _percent(metrics.get("test_accuracy")), _count(metrics.get("parameters")),
            _number(metrics.get("search_seconds")), _count(metrics.get("parameter_free_ops")),
            ", ".join(f"{k}={v}" for k, v in record.hyperparameters.items()
                      if not k.startswith("tuner/")),
            str(record.genotype or "-"), str(record.model or "-")])
    return markdown_table(header, rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (pipes escaped in cells)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
              for row in rows]
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{int(value):,}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
