"""``swd-keras export``: a trained model to verified SavedModel, ONNX and LiteRT exports."""

from __future__ import annotations

from pathlib import Path

import click
from swd_keras.cli.commands.train import backend_option
from swd_keras.cli.main import cli, primitives_module_option, select_backend

# swd_keras.export.FORMATS, repeated: importing that module loads Keras, which must wait
# until the command has chosen the backend (tests/test_export_formats.py checks they agree).
FORMATS = ("saved_model", "onnx", "tflite")


def _formats(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    """``--format a,b --format c`` -> ("a", "b", "c"), each checked."""
    chosen = [part.strip() for value in values for part in value.split(",") if part.strip()]
    unknown = [fmt for fmt in chosen if fmt not in FORMATS]
    if unknown:
        raise click.BadParameter(f"{', '.join(map(repr, unknown))}: choose from "
                                 f"{', '.join(FORMATS)}.", ctx=ctx, param=param)
    return tuple(dict.fromkeys(chosen)) or ("saved_model",)


def formats_option(command):
    """``--format saved_model|onnx|tflite`` (repeatable, or a comma list), for ``export``
    and ``run``."""
    return click.option("--format", "formats", multiple=True, callback=_formats,
                        help="saved_model, onnx or tflite; repeat it or give a comma list "
                             "[default: saved_model].")(command)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@formats_option
@click.option("--name", default=None,
              help="Model name [default: the run folder's name, else the file's stem].")
@click.option("--version", "version", type=click.IntRange(min=1), default=1, show_default=True,
              help="Version folder number.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Base folder; the export goes to OUTPUT_DIR/NAME/VERSION [default: "
                   "savedmodels, or exports without saved_model].")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT_DIR/NAME/VERSION.")
@click.option("--int8/--no-int8", default=True, show_default=True,
              help="With tflite, also write model_int8.tflite (calibrated on the run's "
                   "training images).")
@backend_option
@primitives_module_option
def export(model: Path, formats: tuple[str, ...], name: str | None, version: int,
           output_dir: Path | None, overwrite: bool, int8: bool, backend) -> None:
    """Export MODEL (a run's model.keras) for TensorFlow Serving, ONNX Runtime or LiteRT.

    Every format takes raw uint8 images of any batch size (input "images") and returns
    probabilities and predicted_class; the training normalisation (from the run's
    config.json) is part of the graph and the run's class names go to labels.txt. Each
    format is run once in its own runtime in a separate Python process and compared
    with the Keras model before the version folder is moved into place: saved_model (the
    folder itself), model.onnx, model.tflite and model_int8.tflite (its test accuracy is
    printed next to float32's).
    """
    select_backend(backend)
    from swd_keras.export import ExportError, export_model

    try:
        export_model(model, formats, out_dir=output_dir, name=name, version=version,
                     overwrite=overwrite, int8=int8)
    except FileExistsError as error:
        raise click.UsageError(str(error)) from None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="MODEL") from None
    except ExportError as error:
        raise click.ClickException(str(error)) from None
