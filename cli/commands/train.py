"""``swd-keras train`` (retrain a genotype's network) and ``swd-keras evaluate`` (test a model)."""

from __future__ import annotations

import time
from pathlib import Path

import click
from swd_keras.cli.dataset_options import dataset_errors, dataset_options, image_size
from swd_keras.cli.main import (
    BACKENDS,
    cli,
    devices_option,
    primitives_module_option,
    select_backend,
)

# Settings stored in a run's config.json: with --resume they come from there.
_RUN_SETTINGS = ("genotype", "dataset", "image_size", "test_dir", "holdout", "epochs",
                 "batch_size", "channels", "layers", "lr", "lr_min", "momentum", "weight_decay",
                 "grad_clip", "cutout", "drop_path", "auxiliary", "auxiliary_weight",
                 "label_smoothing", "seed", "limit", "output")
# CLI option name -> RetrainConfig field, where they differ.
_CONFIG_FIELDS = {"lr": "learning_rate", "lr_min": "min_learning_rate"}

backend_option = click.option(
    "--backend", type=click.Choice(BACKENDS), default=None,
    help="Keras backend [default: $KERAS_BACKEND, else tensorflow].")


@cli.command()
@click.option("--genotype", help="Genotype JSON file or built-in name (darts_v2, swd_nas_paper).")
@dataset_options()
@click.option("--epochs", type=click.IntRange(min=1), help="[default: 600; imagenet2012: 250]")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="[default: 96; imagenet2012: 256]")
@click.option("--channels", type=click.IntRange(min=2),
              help="C, channels of the first cells [default: 36; imagenet2012: 48]")
@click.option("--layers", type=click.IntRange(min=1), default=20, show_default=True,
              help="Number of cells.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="Initial learning rate [default: 0.025; imagenet2012: 0.1]")
@click.option("--lr-min", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Learning rate at the end of the cosine schedule.")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), default=0.9,
              show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0),
              help="L2 weight decay, PyTorch-style [default: 3e-4; imagenet2012: 3e-5]")
@click.option("--grad-clip", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Gradient global-norm clip (0: none).")
@click.option("--cutout", type=click.IntRange(min=0), default=None,
              help="Cutout square side, 0 for none [default: 16 for CIFAR, half the image "
                   "side for digits and synthetic, 0 for imagenet2012].")
@click.option("--drop-path", type=click.FloatRange(0, 1, max_open=True), default=0.2,
              show_default=True, help="Maximum drop-path probability (ramped from 0).")
@click.option("--auxiliary/--no-auxiliary", default=True, show_default=True,
              help="Train with the auxiliary head.")
@click.option("--auxiliary-weight", type=click.FloatRange(min=0), default=0.4,
              show_default=True)
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True),
              help="[default: 0; imagenet2012: 0.1]")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use at most N training and N test examples (smoke runs).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="New run folder [default: runs/retrain-GENOTYPE-DATASET-TIME].")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Continue the run in this folder with its stored settings.")
@backend_option
@devices_option
@click.pass_context
@primitives_module_option
def train(ctx: click.Context, genotype, dataset, data_dir, resume, backend, devices,
          **options) -> None:
    """Retrain a genotype's network from scratch and test it once at the end.

    Writes a run folder (config.json, a checkpoint per epoch, history.csv, tensorboard/,
    model.keras, results.json). Defaults are the paper's (SPEC §5); for imagenet2012 the
    ImageNet ones. Interrupted runs continue with --resume RUN_DIR.
    """
    given = [name for name in _RUN_SETTINGS
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if resume is not None:
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise click.UsageError(f"--resume takes the settings from {resume}/config.json; "
                                   f"drop {flags}.")
    elif genotype is None or dataset is None:
        raise click.UsageError("--genotype and --dataset are required (or --resume RUN_DIR).")
    select_backend(backend)

    from swd_keras.network import stacking_plan
    from swd_keras.training import (
        TrainingDivergedError,
        fit_network,
        read_run_config,
        retrain_defaults,
    )

    if resume is None:
        options["image_size"] = image_size(options["image_size"])
        try:
            with dataset_errors():
                config = _config(genotype, dataset, options, retrain_defaults(dataset))
        except ValueError as error:
            raise click.UsageError(str(error)) from None
        from swd_keras.genotype import get_genotype

        try:
            stacking_plan(get_genotype(genotype), config.layers)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="'--genotype'") from None
        run_dir = options["output"] or _default_run_dir(genotype, config.dataset)
    else:
        try:
            read_run_config(resume)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="'--resume'") from None
        config, run_dir = None, resume

    try:
        with dataset_errors():
            results = fit_network(run_dir, config, resume=resume is not None,
                                  data_dir=data_dir, devices=devices)
    except TrainingDivergedError as error:
        raise click.ClickException(str(error)) from None
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    click.echo(_format_results(results, run_dir))


def _config(genotype: str, dataset: str, options: dict, defaults: dict):
    """The RetrainConfig from the options, the dataset's defaults filling the unset ones."""
    from swd_keras.training import RetrainConfig

    fields = {"genotype": genotype, "dataset": dataset}
    for option, value in options.items():
        if option != "output":
            field = _CONFIG_FIELDS.get(option, option)
            fields[field] = defaults.get(field) if value is None else value
    return RetrainConfig(**fields)


def _default_run_dir(genotype: str, dataset: str) -> Path:
    from swd_keras.data.names import label

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"retrain-{Path(genotype).stem}-{label(dataset)}-{stamp}"


def _format_results(results: dict, run_dir: Path) -> str:
    lines = [f"run folder: {run_dir}", f"test top-1 accuracy: {100 * results['test_top1']:.2f}% "
             f"({results['test_examples']} test images)"]
    if "test_top5" in results:
        lines.append(f"test top-5 accuracy: {100 * results['test_top5']:.2f}%")
    lines.append(f"parameters: {results['parameters']:,} (auxiliary head excluded)")
    lines.append(f"model: {Path(run_dir) / results['model']}")
    return "\n".join(lines)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@dataset_options(dataset_help="[default: the dataset of the retraining run that holds MODEL, "
                              "from its config.json]")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate at most N test examples.")
@backend_option
@primitives_module_option
def evaluate(model: Path, dataset: str | None, data_dir, image_size, test_dir, holdout,
             batch_size: int, limit, backend) -> None:
    """Test MODEL (a .keras file, e.g. RUN_DIR/model.keras) on a dataset's test split.

    Prints the top-1 accuracy (and top-5 for imagenet2012) and the parameter count.
    Without --dataset, the test split of the run folder holding MODEL is used.
    """
    settings = _evaluation_data(model, dataset, image_size, test_dir, holdout)
    select_backend(backend)
    from swd_keras.data import train_data
    from swd_keras.network import count_parameters, load_network
    from swd_keras.training import evaluate_network

    try:
        network = load_network(model)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="MODEL") from None
    try:
        # The test split comes with the training data's description; batch 1 keeps the
        # training split's size check out of the way (it is never iterated).
        with dataset_errors():
            data = train_data(settings["dataset"], 1, data_dir=data_dir, limit=limit,
                              image_size=settings["image_size"],
                              test_dir=settings["test_dir"], holdout=settings["holdout"])
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--dataset'") from None
    takes = (tuple(network.input_shape[1:]), network.output_shape[-1])
    has = (tuple(data.info.input_shape), data.info.num_classes)
    if takes != has:
        raise click.BadParameter(
            f"{model} takes {takes[0]} images into {takes[1]} classes; {data.info.name} has "
            f"{has[0]} images and {has[1]} classes.", param_hint="MODEL")
    top_k = (1, 5) if settings["dataset"] == "imagenet2012" else (1,)
    scores = evaluate_network(network, data.test_dataset(batch_size), top_k=top_k)
    click.echo(f"top-1 accuracy: {100 * scores['top1']:.2f}% ({scores['examples']} test images)")
    if "top5" in scores:
        click.echo(f"top-5 accuracy: {100 * scores['top5']:.2f}%")
    click.echo(f"parameters: {count_parameters(network):,}")


def _evaluation_data(model: Path, dataset, size, test_dir, holdout) -> dict:
    """The dataset settings to evaluate on: the options, else the settings of the
    retraining run whose folder holds ``model`` (its ``config.json``)."""
    if dataset is not None:
        return {"dataset": dataset, "image_size": image_size(size), "test_dir": test_dir,
                "holdout": holdout}
    import json

    try:
        stored = json.loads((model.parent / "config.json").read_text(encoding="utf-8"))
        return {key: stored["config"].get(key) for key in ("dataset", "image_size",
                                                           "test_dir", "holdout")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise click.UsageError(f"--dataset is required: {model.parent} holds no retraining "
                               f"run's config.json to take it from.") from None
