"""``swd-keras tune``: KerasTuner over searches (or one genotype's retraining)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from swd_keras.cli.dataset_options import data_settings, dataset_errors, dataset_options
from swd_keras.cli.main import BACKENDS, cli, devices_option, select_backend
from swd_keras.cli.stage_options import stage_options, stage_settings

ORACLES = ("random", "bayesian", "hyperband", "grid")
TRIAL_RETRAIN_EPOCHS = 20
"""A trial's retraining epochs unless --train-epochs: a short budget, the same for all."""


def parse_range(text: str) -> tuple[str, Any]:
    """``--hp NAME=RANGE`` as ``(name, range)`` in a space file's form.

    ``k=2,4,8`` is a Choice, ``lr=0.001..0.1`` bounds (``:log`` or ``:step=S`` after
    them), ``mode=joint`` one value; numbers and true/false are parsed.

    Raises:
        click.BadParameter: a malformed range.
    """
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise click.BadParameter(f"{text!r} is not NAME=VALUES (e.g. k=2,4,8 or "
                                 f"lr=0.001..0.1:log).", param_hint="--hp")
    name, value = name.strip(), value.strip()
    if ".." in value:
        bounds, _, option = value.partition(":")
        low, _, high = bounds.partition("..")
        spec: dict[str, Any] = {"min": _scalar(low), "max": _scalar(high)}
        if option.startswith("step="):
            spec["step"] = _scalar(option[len("step="):])
        elif option:
            spec["sampling"] = option
        return name, spec
    values = [_scalar(part) for part in value.split(",")]
    return name, values if len(values) > 1 else values[0]


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@cli.command()
@dataset_options(dataset_help="Every trial uses it.")
@click.option("--space", "space_file", type=click.Path(dir_okay=False, exists=True),
              default=None, help="JSON or YAML file: setting name -> list of values, "
                                 "{min, max[, step][, sampling]} or one value.")
@click.option("--hp", "ranges", multiple=True, metavar="NAME=RANGE",
              help="One tuned setting (repeatable, added to --space): k=2,4,8; "
                   "arch_lr=0.0001..0.01:log; channels=8..32:step=8; mode=joint. Search "
                   "settings by their name, the trials' retraining as retrain.NAME.")
@click.option("--genotype", default=None,
              help="Tune the retraining of this genotype (a built-in name or JSON file) "
                   "instead of searching in each trial; --hp names are then retraining "
                   "settings.")
@click.option("--oracle", type=click.Choice(ORACLES), default="random", show_default=True)
@click.option("--max-trials", type=click.IntRange(min=1), default=10, show_default=True,
              help="Trials in all (hyperband: its largest retraining budget in epochs, "
                   "from which it plans its own trials).")
@click.option("--validation", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.1, show_default=True,
              help="Fraction of the training split set aside, unseen by every search and "
                   "retraining, that scores the trials.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@stage_options(train_epochs_default=str(TRIAL_RETRAIN_EPOCHS))
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Project folder [default: runs/tune-DATASET]; running the command again "
                   "continues it.")
@click.option("--overwrite", is_flag=True, help="Start the project over.")
@click.option("--summary", type=click.IntRange(min=1), default=10, show_default=True,
              help="Trials in the final table.")
@click.option("--chief-timeout", type=click.FloatRange(min=0, min_open=True), default=300.0,
              show_default=True,
              help="Distributed worker: seconds to wait for the chief (KERASTUNER_ORACLE_IP"
                   ":KERASTUNER_ORACLE_PORT).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Keras backend [default: KERAS_BACKEND or tensorflow].")
@devices_option
def tune(space_file, ranges, genotype, oracle, max_trials, validation, seed, output,
         overwrite, summary, chief_timeout, backend, devices, **options) -> None:
    """Tune the search's settings with KerasTuner: each trial searches, retrains the
    genotype it found for a short budget and is scored by the validation accuracy.

    With --genotype, each trial retrains that genotype instead. The project folder
    holds KerasTuner's oracle and one trial_ID/ folder per trial; running the same
    command again continues it without repeating a finished trial. With
    KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT set, one
    process serves the trials (the id chief) and the others run them (docs/SCALE.md).
    """
    if options["dataset"] is None:
        raise click.UsageError("--dataset is required.")
    select_backend(backend)
    from swd_keras.data.names import label
    from swd_keras.tuning import (
        RetrainHyperModel,
        SearchHyperModel,
        SWDTuner,
        make_oracle,
        summary_table,
    )
    from swd_keras.tuning.distributed import role
    from swd_keras.tuning.space import read_space_file

    stages = stage_settings(options, devices)
    stages["retrain"].setdefault("epochs", TRIAL_RETRAIN_EPOCHS)
    data = data_settings(options)
    try:
        with dataset_errors():
            given = dict(parse_range(text) for text in ranges)
            if space_file is not None:
                given = {**read_space_file(space_file), **given}
            if genotype is not None:
                if set(stages["search"]) - {"limit", "devices"}:
                    raise click.UsageError("--genotype tunes a retraining: the --search-* "
                                           "options do not apply.")
                hypermodel = RetrainHyperModel(genotype, options["dataset"], given,
                                               retrain=stages["retrain"],
                                               validation=validation, seed=seed, **data)
            else:
                hypermodel = SearchHyperModel(options["dataset"], given,
                                              search=stages["search"],
                                              retrain=stages["retrain"],
                                              validation=validation, seed=seed, **data)
            project = output or Path(f"runs/tune-{label(options['dataset'])}")
            tuner = SWDTuner(hypermodel, make_oracle(oracle, max_trials, seed=seed),
                             project.parent, project.name, overwrite=overwrite,
                             echo=click.echo, chief_timeout=chief_timeout)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    try:
        tuner.search()
    except RuntimeError as error:  # KerasTuner: too many trials failed in a row
        raise click.ClickException(str(error).strip().splitlines()[0]) from None
    if role() == "worker":
        click.echo("this worker's trials are done; the chief holds the results.")
        return
    records = tuner.records()
    click.echo(f"\n{len(records)} trials in {project}; best first:\n"
               f"{summary_table(records, summary)}")

