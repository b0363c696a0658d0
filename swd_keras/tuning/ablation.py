"""The paper's ablation studies as fixed grids of tuning trials.

- ``table3``: UA and LA pooling (the paper's Table III: GAP+GMP or GAP in each module).
- ``table4``: UA, LA and architectural weight normalization on and off (Table IV).
- ``k``: the channel fraction 1/k (Fig. 4).

Each study is one tuning project (``SWDTuner`` under a grid oracle) over its rows and
``seeds`` seeds: every trial searches with the row's settings and retrains the genotype
it found, so the studies resume, and spread over KerasTuner's workers, like any tuning.
The report gives, per row, the validation and test error of the retrained network as
mean ± standard deviation over seeds, its parameters, the search time and the number of
parameter-free operations the search chose, next to the paper's CIFAR-10 figure.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from swd_keras.tuning import distributed
from swd_keras.tuning.hypermodels import VARIANT, SearchHyperModel
from swd_keras.tuning.tuner import SWDTuner, TrialRecord, make_oracle, markdown_table

K_VALUES = (1, 2, 4, 8)
"""Fig. 4's values of k (C/k channels of each edge enter the candidate operations)."""


@dataclasses.dataclass(frozen=True)
class Study:
    """One ablation study: its rows (name -> fixed search settings) and the paper's
    CIFAR-10 test error of each row, where the paper gives one."""

    title: str
    rows: dict[str, dict[str, Any]]
    paper_error: dict[str, float]


def _pooling_row(ua: str, la: str) -> tuple[str, dict[str, Any]]:
    names = {"avg+max": "GAP+GMP", "avg": "GAP"}
    return f"UA {names[ua]}, LA {names[la]}", {"ua_pooling": ua, "la_pooling": la}


def _switch_row(ua: bool, la: bool, awn: bool) -> tuple[str, dict[str, Any]]:
    name = ", ".join(f"{module} {'on' if on else 'off'}"
                     for module, on in (("UA", ua), ("LA", la), ("AWN", awn)))
    return name, {"upper_attention": ua, "lower_attention": la, "normalization": awn}


def _study(title: str, rows: list[tuple[str, dict]], errors: Sequence[float | None]) -> Study:
    return Study(title, dict(rows), {name: error for (name, _), error
                                     in zip(rows, errors, strict=True) if error is not None})


def studies(k_values: Sequence[int] = K_VALUES) -> dict[str, Study]:
    """The studies by name, with the k study over ``k_values``."""
    return {
        "table3": _study(
            "Table III: UA and LA pooling",
            [_pooling_row("avg+max", "avg+max"), _pooling_row("avg", "avg+max"),
             _pooling_row("avg", "avg"), _pooling_row("avg+max", "avg")],
            [3.01, 3.33, 2.85, 2.51]),
        "table4": _study(
            "Table IV: UA, LA and AWN",
            [_switch_row(False, False, False), _switch_row(False, True, False),
             _switch_row(True, True, False), _switch_row(True, True, True)],
            [2.76, 2.6, 2.56, 2.51]),
        "k": _study("Fig. 4: k", [(f"k={k}", {"k": k}) for k in k_values],
                    [None] * len(k_values)),
    }


STUDIES = tuple(studies())
"""The study names; ``all`` runs every one."""


def study_names(study: str | Sequence[str]) -> tuple[str, ...]:
    """``study`` (a name, ``all``, or several names) as study names.

    Raises:
        ValueError: an unknown name, listing the allowed ones.
    """
    chosen = [study] if isinstance(study, str) else list(study)
    if "all" in chosen:
        return STUDIES
    unknown = [name for name in chosen if name not in STUDIES]
    if unknown or not chosen:
        raise ValueError(f"study must be one of {', '.join(STUDIES)} or all, got "
                         f"{', '.join(map(repr, unknown)) or 'none'}.")
    return tuple(name for name in STUDIES if name in chosen)


@dataclasses.dataclass(frozen=True)
class AblationResult:
    """What ``run_ablation`` produced.

    Attributes:
        rows: per study, one dict per row: ``row``, ``trials``, ``val_error`` and
            ``test_error`` (mean, std; percent), ``parameters``, ``search_seconds``,
            ``parameter_free_ops`` (means), ``paper_error``.
        tables: per study, its Markdown table.
        report: the Markdown report (``DIRECTORY/ablation.md``); None on a distributed
            worker (its chief writes it).
        plot: the k study's plot (``DIRECTORY/k.png``), if it ran.
        seconds: wall time of this call.
    """

    rows: dict[str, list[dict[str, Any]]]
    tables: dict[str, str]
    report: Path | None
    plot: Path | None
    seconds: float


def run_ablation(study: str | Sequence[str], dataset, directory: str | Path, *,
                 seeds: int = 1, search: Mapping[str, Any] | None = None,
                 retrain: Mapping[str, Any] | None = None, validation: float = 0.1,
                 k_values: Sequence[int] = K_VALUES, overwrite: bool = False,
                 echo: Callable[[str], None] = print, verbose: str | int = 0,
                 chief_timeout: float = distributed.DEFAULT_CHIEF_TIMEOUT,
                 **data) -> AblationResult:
    """Runs the studies' grids (or continues them) and writes their report.

    Args:
        study: ``table3``, ``table4``, ``k``, ``all`` or a list of names.
        dataset: the dataset of every trial.
        directory: the ablation folder: one tuning project per study, ``ablation.md``,
            ``ablation.json`` and ``k.png``.
        seeds: the seeds ``0 .. seeds - 1`` each row is run with.
        search: fixed search settings of every trial (its budget).
        retrain: fixed retraining settings of every trial (its budget).
        validation: the fraction of the training split set aside to score the trials.
        k_values: the k study's values.
        overwrite: start the studies over.
        echo: where progress goes.
        verbose: Keras' progress-bar verbosity in the trials.
        chief_timeout: on a distributed worker, the seconds to wait for the chief.
        **data: ``data_dir``, ``image_size``, ``test_dir``, ``holdout``.

    Returns:
        An ``AblationResult``.

    Raises:
        ValueError: an unknown study, a bad seed count, a row whose settings break the
            search's rules (all checked before any trial starts), or several studies in
            distributed tuning.
    """
    started = time.time()
    names = study_names(study)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}.")
    if distributed.role() != "single" and len(names) > 1:
        raise ValueError(f"distributed tuning runs one study at a time (its chief serves one "
                         f"oracle): run --study {names[0]}, then the others, on every process.")
    chosen = {name: studies(k_values)[name] for name in names}
    hypermodels = {name: SearchHyperModel(dataset, {"seed": list(range(seeds))},
                                          search=search, retrain=retrain,
                                          validation=validation, variants=chosen[name].rows,
                                          **data)
                   for name in names}
    directory = Path(directory)
    rows, tables = {}, {}
    for name, hypermodel in hypermodels.items():
        echo(f"== study {name}: {chosen[name].title}, {len(chosen[name].rows)} rows x "
             f"{seeds} seed{'s' * (seeds > 1)}")
        tuner = SWDTuner(hypermodel, make_oracle("grid", len(chosen[name].rows) * seeds),
                         directory, name, overwrite=overwrite, echo=echo, verbose=verbose,
                         chief_timeout=chief_timeout)
        tuner.search()
        if distributed.is_worker():  # the chief holds the results and writes the report
            return AblationResult({}, {}, None, None, round(time.time() - started, 1))
        rows[name] = study_rows(chosen[name], tuner.records())
        tables[name] = study_table(rows[name])
    plot = plot_k(rows["k"], directory / "k.png") if "k" in rows else None
    report = write_report(directory, chosen, rows, tables, plot)
    return AblationResult(rows, tables, report, plot, round(time.time() - started, 1))


def study_rows(study: Study, records: list[TrialRecord]) -> list[dict[str, Any]]:
    """One summary per row of ``study`` over its finished trials in ``records``."""
    finished = [r for r in records if "val_accuracy" in r.metrics]
    summaries = []
    for row in study.rows:
        trials = [r for r in finished if r.hyperparameters.get(VARIANT) == row]
        metric = {name: [r.metrics[name] for r in trials if name in r.metrics]
                  for name in ("val_accuracy", "test_accuracy", "parameters",
                               "search_seconds", "parameter_free_ops")}
        summaries.append({
            "row": row, "settings": study.rows[row], "trials": len(trials),
            "seeds": sorted(r.hyperparameters.get("seed") for r in trials),
            "val_error": _mean_std([100 * (1 - v) for v in metric["val_accuracy"]]),
            "test_error": _mean_std([100 * (1 - v) for v in metric["test_accuracy"]]),
            "parameters": _mean(metric["parameters"]),
            "search_seconds": _mean(metric["search_seconds"]),
            "parameter_free_ops": _mean(metric["parameter_free_ops"]),
            "paper_error": study.paper_error.get(row)})
    return summaries


def study_table(rows: list[dict[str, Any]]) -> str:
    """A study's rows as a Markdown table."""
    header = ["row", "trials", "val error (%)", "test error (%)", "params", "search (s)",
              "param-free ops", "paper test error (%)"]
    return markdown_table(header, [[
        row["row"], str(row["trials"]), _spread(row["val_error"]),
        _spread(row["test_error"]),
        "-" if row["parameters"] is None else f"{row['parameters']:,.0f}",
        "-" if row["search_seconds"] is None else f"{row['search_seconds']:.0f}",
        "-" if row["parameter_free_ops"] is None else f"{row['parameter_free_ops']:.1f}",
        "-" if row["paper_error"] is None else f"{row['paper_error']:.2f}"] for row in rows])


def plot_k(rows: list[dict[str, Any]], path: Path) -> Path:
    """Error and search time against k (the paper's Fig. 4) as a PNG, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from swd_keras.runs import atomic_write_bytes

    done = [row for row in rows if row["trials"]]
    ks = [row["settings"]["k"] for row in done]
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    errors = figure.add_subplot()
    for key, label, marker in (("val_error", "validation error", "o"),
                               ("test_error", "test error", "s")):
        errors.errorbar(ks, [row[key][0] for row in done],
                        yerr=[row[key][1] or 0.0 for row in done], marker=marker,
                        capsize=3, label=label)
    errors.set_xscale("log", base=2)
    errors.set_xticks(ks, [str(k) for k in ks])
    errors.set_xlabel("k (C/k channels enter the candidate operations)")
    errors.set_ylabel("error of the retrained network (%)")
    seconds = errors.twinx()
    seconds.plot(ks, [row["search_seconds"] for row in done], "d--", color="grey",
                 label="search time")
    seconds.set_ylabel("search time (s)")
    lines = errors.get_legend_handles_labels()
    more = seconds.get_legend_handles_labels()
    errors.legend(lines[0] + more[0], lines[1] + more[1], loc="best", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_report(directory: Path, chosen: dict[str, Study], rows: dict, tables: dict,
                 plot: Path | None) -> Path:
    """``ablation.md`` (one table per study) and ``ablation.json`` (the rows)."""
    from swd_keras.runs import atomic_write_json, atomic_write_text

    parts = ["# Ablation studies", ""]
    for name, table in tables.items():
        parts += [f"## {chosen[name].title}", "", table, ""]
        if name == "k" and plot is not None:
            parts += [f"![error and search time against k]({plot.name})", ""]
    atomic_write_json(directory / "ablation.json", rows)
    return atomic_write_text(directory / "ablation.md", "\n".join(parts))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    mean = _mean(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _spread(value: tuple[float | None, float | None]) -> str:
    mean, std = value
    if mean is None:
        return "-"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"

