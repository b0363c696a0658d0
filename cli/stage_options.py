"""The per-stage options of the commands that search and retrain in one go (``run``,
``tune``, ``ablate``): ``--search-epochs`` ... ``--train-layers``, ``--limit`` and
``--primitives``."""

from __future__ import annotations

from typing import Any

import click

STAGE_FIELDS = {
    "search_epochs": ("search", "epochs"), "search_batch_size": ("search", "batch_size"),
    "search_channels": ("search", "channels"), "search_layers": ("search", "layers"),
    "train_epochs": ("retrain", "epochs"), "train_batch_size": ("retrain", "batch_size"),
    "train_channels": ("retrain", "channels"), "train_layers": ("retrain", "layers"),
    "limit": ("both", "limit"), "primitives": ("search", "primitives"),
}
"""Each option's stage (``search``, ``retrain`` or both) and config field."""


def _primitive_names(_ctx, _param, value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(name.strip() for name in value.split(","))


primitives_option = click.option(
    "--primitives", default=None, metavar="A,B,...", callback=_primitive_names,
    help="The search's candidate operations, comma-separated, in channel-slice order "
         "[default: the paper's 8].")
"""``--primitives A,B,...`` as a tuple of names (None when not given)."""


def stage_options(train_epochs_default: str = "600 (imagenet2012: 250); digits and "
                                              "synthetic: 50"):
    """The per-stage options, as one decorator (their values are None when not given).

    Args:
        train_epochs_default: what ``--train-epochs`` defaults to, for its help.
    """
    options = [
        click.option("--search-epochs", type=click.IntRange(min=1), default=None,
                     help="[default: 30; digits and synthetic: 8]"),
        click.option("--search-batch-size", type=click.IntRange(min=1), default=None,
                     help="[default: 64]"),
        click.option("--search-channels", type=click.IntRange(min=2), default=None,
                     help="C of the supernet [default: 16]"),
        click.option("--search-layers", type=click.IntRange(min=1), default=None,
                     help="Cells of the supernet [default: 5]"),
        click.option("--train-epochs", type=click.IntRange(min=1), default=None,
                     help=f"[default: {train_epochs_default}]"),
        click.option("--train-batch-size", type=click.IntRange(min=1), default=None,
                     help="[default: 96 (imagenet2012: 256); digits and synthetic: 64]"),
        click.option("--train-channels", type=click.IntRange(min=2), default=None,
                     help="C of the retrained network [default: 36 (imagenet2012: 48); "
                          "digits and synthetic: 16]"),
        click.option("--train-layers", type=click.IntRange(min=1), default=None,
                     help="Cells of the retrained network [default: 20; digits and "
                          "synthetic: 8]"),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Use at most N images per search half and N training and test "
                          "images (smoke runs)."),
        primitives_option,
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def stage_settings(options: dict[str, Any], devices=None) -> dict[str, dict[str, Any]]:
    """``{"search": {field: value}, "retrain": {...}}`` of the stage options given (popped
    from ``options``), with ``devices`` in both when given."""
    stages: dict[str, dict[str, Any]] = {"search": {}, "retrain": {}}
    for option, (stage, field) in STAGE_FIELDS.items():
        value = options.pop(option)
        if value is not None:
            for name in ("search", "retrain") if stage == "both" else (stage,):
                stages[name][field] = value
    if devices is not None:
        stages["search"]["devices"] = stages["retrain"]["devices"] = devices
    return stages
