"""``DatasetRunConfig``: what the search and retraining configs share about their data."""

from __future__ import annotations

import dataclasses
from typing import Any

from swd_keras.runs import RunConfig

DATA_FIELDS = ("dataset", "image_size", "test_dir", "holdout", "validation")
"""The config fields that name a job's data (``swd_keras.data.sources.check_settings``)."""


class DatasetRunConfig(RunConfig):
    """A job config that reads a dataset: its ``DATA_FIELDS`` are checked and made
    reopenable (absolute paths) when it is made, and its JSON records an
    ``ArrayDataset`` by its ``arrays:HASH``."""

    def _check_data_fields(self) -> None:
        from swd_keras.data.sources import check_settings

        checked = check_settings(*(getattr(self, name) for name in DATA_FIELDS))
        for name, value in zip(DATA_FIELDS, checked, strict=True):
            object.__setattr__(self, name, value)

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (arrays as their ``arrays:HASH`` record)."""
        from swd_keras.data.sources import recorded

        return {**{field.name: getattr(self, field.name) for field in dataclasses.fields(self)},
                "dataset": recorded(self.dataset)}
