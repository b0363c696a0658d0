"""``swd-keras export``: a trained model to a verified TF Serving SavedModel."""

from __future__ import annotations

from pathlib import Path

import click
from swd_keras.cli.commands.train import backend_option
from swd_keras.cli.main import cli, primitives_module_option, select_backend


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--name", default=None,
              help="Model name [default: the run folder's name, else the file's stem].")
@click.option("--version", "version", type=click.IntRange(min=1), default=1, show_default=True,
              help="Version folder number.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("savedmodels"), show_default=True,
              help="Base folder; the export goes to OUTPUT_DIR/NAME/VERSION.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT_DIR/NAME/VERSION.")
@backend_option
@primitives_module_option
def export(model: Path, name: str | None, version: int, output_dir: Path, overwrite: bool,
           backend) -> None:
    """Export MODEL (a run's model.keras) as a SavedModel for TensorFlow Serving.

    The serving_default signature takes raw uint8 images of any batch size and returns
    probabilities and predicted_class; the training normalisation (from the run's
    config.json) is part of the graph. The export is served once from a separate Python
    process and compared with the Keras model before it is moved into place.
    """
    select_backend(backend)
    from swd_keras.export import ExportError, export_savedmodel

    try:
        export_savedmodel(model, out_dir=output_dir, name=name, version=version,
                          overwrite=overwrite)
    except FileExistsError as error:
        raise click.UsageError(str(error)) from None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="MODEL") from None
    except ExportError as error:
        raise click.ClickException(str(error)) from None
