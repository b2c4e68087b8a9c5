"""A CSV logger whose history survives a resume; the packages Lightning's other loggers need.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts. Here a resumed run
keeps the rows logged before its checkpoint and drops the rows of steps it is about to repeat
(logged after the checkpoint by the run that was killed), so the file reads as one run.
"""

from __future__ import annotations

import csv
import importlib.util
import os

from pytorch_lightning.loggers import CSVLogger as _CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from attnmt.errors import ConfigError
from attnmt.utils.io import atomic_path

# Lightning logger class -> (modules that provide it, any one will do; the attnmt extra to install)
NEEDS = {
    "TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
    "WandbLogger": (("wandb",), "wandb"),
    "MLFlowLogger": (("mlflow",), "mlflow"),
}


def check_logger_packages(loggers: dict) -> None:
    """A one-line error, before any work, for a chosen logger whose package is not installed
    (Lightning would only fail once the run has started)."""
    from hydra.utils import get_object

    for key, node in (loggers or {}).items():
        if node is None or "_target_" not in node:
            continue
        for cls in getattr(get_object(node["_target_"]), "__mro__", ()):
            if cls.__name__ in NEEDS and cls.__module__.startswith(("pytorch_lightning.", "lightning.")):
                modules, extra = NEEDS[cls.__name__]
                if not any(importlib.util.find_spec(m) for m in modules):
                    raise ConfigError(
                        f"logger.{key}: {cls.__name__} needs the {modules[0]} package, which is not installed: "
                        f'pip install -e ".[{extra}]" (or pip install {modules[0]})'
                    )
                break


class _ContinuingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv
        self._rewind_pending = os.path.isfile(self.metrics_file_path)

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self._rewind_pending and step is not None:
            self._rewind_pending = False
            self._drop_rows_from(step)
        super().log_metrics(metrics_dict, step)

    def _drop_rows_from(self, step: int) -> None:
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step") and int(float(r["step"])) < step]
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = keys


class CSVLogger(_CSVLogger):
    """``pytorch_lightning.loggers.CSVLogger`` that continues an earlier ``metrics.csv``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
