"""``swd-keras ablate``: the paper's ablation studies (Tables III-IV, Fig. 4) as tuning
grids, with their tables and plot."""

from __future__ import annotations

from pathlib import Path

import click
from swd_keras.cli.commands.tune import TRIAL_RETRAIN_EPOCHS
from swd_keras.cli.dataset_options import data_settings, dataset_errors, dataset_options
from swd_keras.cli.main import BACKENDS, cli, devices_option, select_backend
from swd_keras.cli.stage_options import stage_options, stage_settings

STUDY_CHOICES = ("table3", "table4", "k", "all")


def _k_values(_ctx, _param, value: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers.") \
            from None
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise click.BadParameter(f"{value!r}: k values must be distinct positive integers.")
    return values


@cli.command()
@click.option("--study", type=click.Choice(STUDY_CHOICES), required=True,
              help="table3: UA/LA pooling; table4: UA, LA and AWN on and off; k: Fig. 4's "
                   "k; all: the three.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run every row with seeds 0..N-1 (mean and spread over them).")
@click.option("--k-values", default="1,2,4,8", show_default=True, callback=_k_values,
              help="The k study's values (each must divide --search-channels).")
@dataset_options(dataset_help="Every trial uses it.")
@click.option("--validation", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.1, show_default=True,
              help="Fraction of the training split set aside, unseen by every search and "
                   "retraining, for the validation error.")
@stage_options(train_epochs_default=str(TRIAL_RETRAIN_EPOCHS))
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Ablation folder [default: runs/ablation-DATASET]; running the command "
                   "again continues it.")
@click.option("--overwrite", is_flag=True, help="Start the studies over.")
@click.option("--chief-timeout", type=click.FloatRange(min=0, min_open=True), default=300.0,
              show_default=True, help="Distributed worker: seconds to wait for the chief.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Keras backend [default: KERAS_BACKEND or tensorflow].")
@devices_option
def ablate(study, seeds, k_values, validation, output, overwrite, chief_timeout, backend,
           devices, **options) -> None:
    """Run the paper's ablation studies: every row searched and briefly retrained
    with each seed, then one Markdown table per study (validation and test error as
    mean ± spread over seeds, parameters, search time, parameter-free ops) and a plot
    of error and search time against k.

    Writes OUTPUT/ablation.md, ablation.json, k.png and one KerasTuner project per
    study; running the command again continues unfinished studies.
    """
    if options["dataset"] is None:
        raise click.UsageError("--dataset is required.")
    select_backend(backend)
    from swd_keras.data.names import label
    from swd_keras.tuning import run_ablation
    from swd_keras.tuning.distributed import role

    stages = stage_settings(options, devices)
    stages["retrain"].setdefault("epochs", TRIAL_RETRAIN_EPOCHS)
    folder = output or Path(f"runs/ablation-{label(options['dataset'])}")
    try:
        with dataset_errors():
            result = run_ablation(
                study, options["dataset"], folder, seeds=seeds, search=stages["search"],
                retrain=stages["retrain"], validation=validation, k_values=k_values,
                overwrite=overwrite, echo=click.echo, chief_timeout=chief_timeout,
                **data_settings(options))
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    except RuntimeError as error:  # KerasTuner: too many trials failed in a row
        raise click.ClickException(str(error).strip().splitlines()[0]) from None
    if role() == "worker":
        click.echo("this worker's trials are done; the chief writes the report.")
        return
    for name, table in result.tables.items():
        click.echo(f"\n{name}:\n{table}")
    click.echo(f"\nreport: {result.report}" + (f"; plot: {result.plot}" if result.plot else "")
               + f" ({result.seconds:.0f} s)")
