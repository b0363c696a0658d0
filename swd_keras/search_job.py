"""A whole search run: config, data, model, epochs, checkpoints, genotypes, resume.

The run folder holds ``config.json``, ``checkpoint.npz`` (the last completed epoch:
model, both optimizers, edge-weight accumulators, history, genotypes), ``history.csv``,
``genotypes.jsonl`` (one line per epoch), ``genotype.json`` and ``genotype.png`` (the
latest), and ``logs/`` (TensorBoard). Every file is written atomically, so a run killed
at any moment resumes from its last completed epoch and ends with the genotype an
unbroken run gives.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from swd_keras.genotype import Genotype
from swd_keras.runs import atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint

CONFIG_FILE, CHECKPOINT_FILE = "config.json", "checkpoint.npz"
PRECISIONS = ("float32", "mixed_bfloat16")
"""Compute dtypes of the search. float16 would need loss scaling inside the two-optimizer
step; bfloat16 keeps float32's range and needs none (GPUs from Ampere on, recent CPUs)."""


@dataclasses.dataclass
class SearchConfig:
    """Every setting of a search; the defaults are the paper's (SPEC §1-4)."""

    dataset: str = "cifar10"
    data_dir: str | None = None
    epochs: int = 30
    batch_size: int = 64
    channels: int = 16
    layers: int = 5
    k: int = 4
    mode: str = "bilevel"
    method: str = "swd"
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_lr: float = 0.025
    grad_clip: float = 5.0
    seed: int = 0
    upper_attention: bool = True
    lower_attention: bool = True
    normalization: bool = True
    ua_pooling: str = "avg+max"
    la_pooling: str = "avg"
    jit: bool | None = None
    precision: str = "float32"
    remat: bool | str = "auto"
    limit: int | None = None
    backend: str | None = None

    def validate(self) -> SearchConfig:
        """Raises a ValueError naming the first bad setting; returns self."""
        from swd_keras.data import DATASETS
        from swd_keras.search import MODES
        from swd_keras.supernet import METHODS, REMATERIALIZE, check_channels

        remat_choices = ("auto", *REMATERIALIZE)

        checks = [
            (self.dataset in DATASETS, f"dataset must be one of {DATASETS}, got {self.dataset!r}"),
            (self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}"),
            (self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.layers >= 1, f"layers must be at least 1, got {self.layers}"),
            (self.channels >= 2, f"channels must be at least 2, got {self.channels}"),
            (self.k >= 1, f"k must be at least 1, got {self.k}"),
            (not self.upper_attention or self.method == "darts" or self.channels % self.k == 0,
             f"k={self.k} must divide the channel count c={self.channels} "
             f"(c/k channels enter the candidate operations)"),
            (min(self.lr, self.arch_lr) > 0 and self.lr_min >= 0,
             "lr and arch_lr must be > 0 and lr_min >= 0"),
            (self.grad_clip > 0, f"grad_clip must be > 0, got {self.grad_clip}"),
            (self.precision in PRECISIONS,
             f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (isinstance(self.remat, bool) or self.remat in remat_choices,
             f"remat must be one of {remat_choices}, got {self.remat!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message + ".")
        check_channels(self.channels, self.k, self.layers,
                       self.upper_attention and self.method != "darts")
        return self

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> SearchConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in fields})


def resolve_remat(remat: bool | str) -> bool | str:
    """``build_supernet``'s ``rematerialize`` for a config's ``remat``: ``"auto"`` is
    ``"first-stage"`` on TensorFlow, where it brings the paper's search step from 2.57
    to 2.03 GB for a 1.3x longer step (docs/BENCHMARKS.md, item 19), and ``"none"`` on
    JAX (XLA's buffer assignment, not the activations, sets its peak) and PyTorch
    (whose ``"all"`` reaches 1.9 GB at a 1.6x slower step; the choice is the user's)."""
    if remat != "auto":
        return remat
    return "first-stage" if keras.backend.backend() == "tensorflow" else "none"


class SearchDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def is_run_folder(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def load_config(run_dir: str | Path) -> SearchConfig:
    """The config of an existing run folder, or a ValueError saying it is not one."""
    run_dir = Path(run_dir)
    if not is_run_folder(run_dir):
        raise ValueError(f"{run_dir} is not a search run folder (no {CONFIG_FILE}).")
    try:
        return SearchConfig.from_json(json.loads((run_dir / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"{run_dir / CONFIG_FILE} is not a valid search config: {error}") \
            from None


def build_search_model(config: SearchConfig, input_shape, num_classes: int,
                       steps_per_epoch: int):
    """The compiled ``SWDSearchModel`` of a config."""
    from swd_keras.optimizers import EpochCosineDecay, TorchSGD
    from swd_keras.search import SWDSearchModel
    from swd_keras.supernet import build_supernet

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)  # layers take the policy when built
    try:
        supernet = build_supernet(
            input_shape, num_classes, channels=config.channels, layers=config.layers,
            k=config.k, method=config.method, ua_pooling=config.ua_pooling,
            la_pooling=config.la_pooling, upper_attention=config.upper_attention,
            lower_attention=config.lower_attention,
            rematerialize=resolve_remat(config.remat))
    finally:
        keras.config.set_dtype_policy(previous_policy)
    model = SWDSearchModel(supernet, mode=config.mode, method=config.method)

    def sgd(lr, name):
        schedule = EpochCosineDecay(lr, config.lr_min, config.epochs, steps_per_epoch)
        return TorchSGD(schedule, momentum=config.momentum, weight_decay=config.weight_decay,
                        global_clipnorm=config.grad_clip, name=name)

    model.compile(weights_optimizer=sgd(config.lr, "weights_sgd"),
                  attention_optimizer=sgd(config.arch_lr, "attention_sgd"),
                  jit_compile="auto" if config.jit is None else config.jit)
    return model


# -- callbacks --------------------------------------------------------------------------

class SearchRunCallback(keras.callbacks.Callback):
    """Per epoch: stop on a non-finite loss; derive, log and write the genotype; record
    the history; checkpoint. Per step: stop at once on a non-finite loss."""

    def __init__(self, run_dir: Path, config: SearchConfig, state: dict,
                 echo: Callable[[str], None] = print):
        super().__init__()
        self.run_dir, self.config, self.state, self.echo = run_dir, config, state, echo
        self.diverged: str | None = None
        self._fit_started: float | None = None
        self._epoch_line: str | None = None

    def on_train_begin(self, logs=None):
        self._fit_started = time.perf_counter()

    def _flush_epoch_line(self):
        # Printed once Keras' progress bar has ended its line (it runs after this
        # callback at the epoch's end).
        if self._epoch_line is not None:
            line, self._epoch_line = self._epoch_line, None
            self.echo(line)

    def on_epoch_begin(self, epoch, logs=None):
        self._flush_epoch_line()

    def on_train_end(self, logs=None):
        self._flush_epoch_line()

    def on_train_batch_end(self, batch, logs=None):
        if self._fit_started is not None:  # the first step: the compiled step runs
            seconds = time.perf_counter() - self._fit_started
            self.echo(f"      first step done after {seconds:.0f} s")
            self._fit_started = None
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            self.diverged = f"the training loss became {loss} at step {batch + 1}"
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = {key: float(value) for key, value in (logs or {}).items()}
        bad = [key for key, value in logs.items() if not math.isfinite(value)]
        if self.diverged or bad:
            self.diverged = self.diverged or f"{bad[0]} became {logs[bad[0]]}"
            self.model.stop_training = True
            return
        genotype = self.model.genotype(normalize=self.config.normalization)
        self.state["epoch"] = epoch + 1
        self.state["history"].append({"epoch": epoch + 1, **logs})
        self.state["genotypes"].append({"epoch": epoch + 1, "genotype": genotype.to_dict()})
        write_run_outputs(self.run_dir, self.state, genotype)
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, self.model, self.state)
        self._epoch_line = f"epoch {epoch + 1}: {genotype}"


def write_run_outputs(run_dir: Path, state: dict, genotype: Genotype) -> None:
    """history.csv, genotypes.jsonl, genotype.json and genotype.png, from the state."""
    from swd_keras.plot import plot_genotype

    history = state["history"]
    columns = list(dict.fromkeys(key for row in history for key in row))
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns)
                                   for row in history]
    atomic_write_text(run_dir / "history.csv", "\n".join(lines) + "\n")
    atomic_write_text(run_dir / "genotypes.jsonl",
                      "".join(json.dumps(line) + "\n" for line in state["genotypes"]))
    genotype.save(run_dir / "genotype.json")
    plot_genotype(genotype, run_dir / "genotype.png")


# -- the run ----------------------------------------------------------------------------

@dataclasses.dataclass
class SearchResult:
    genotype: Genotype
    run_dir: Path
    dataset: str
    history: list
    seconds: float


def run_search(config: SearchConfig | None = None, run_dir: str | Path = "runs/search",
               resume: bool = False, echo: Callable[[str], None] = print,
               verbose: str | int = "auto") -> SearchResult:
    """Runs (or resumes) a search and returns its final genotype.

    Args:
        config: the settings (ignored when resuming: the run folder's config is used).
        run_dir: the run folder; a new run refuses a folder that already holds a run.
        resume: continue the run in ``run_dir`` from its last completed epoch.
        echo: where progress lines go.
        verbose: Keras' progress-bar verbosity.

    Returns:
        A ``SearchResult`` with the genotype of the last epoch.

    Raises:
        ValueError: a bad setting or run folder, or unavailable data.
        SearchDiverged: the loss became NaN/inf (the last good checkpoint is kept).
    """
    from swd_keras.data import search_data

    run_dir = Path(run_dir)
    if resume:
        config = load_config(run_dir)
    else:
        config = (config or SearchConfig()).validate()
        if is_run_folder(run_dir):
            raise ValueError(f"{run_dir} already holds a run: pass resume=True (--resume) "
                             f"to continue it, or choose another output folder.")
        atomic_write_json(run_dir / CONFIG_FILE, config.to_json())

    started = time.time()
    state = {"epoch": 0, "history": [], "genotypes": []}
    checkpoint = run_dir / CHECKPOINT_FILE
    initial_epoch = 0
    if resume and checkpoint.is_file():
        initial_epoch = json.loads(str(np.load(checkpoint)["state"]))["epoch"]
    if initial_epoch >= config.epochs:
        echo(f"{run_dir} already finished all {config.epochs} epochs.")
        return _result_from_state(run_dir, started)

    echo(f"[1/3] loading {config.dataset} ...")
    data = search_data(config.dataset, config.batch_size, seed=config.seed,
                       data_dir=config.data_dir, epochs=config.epochs,
                       initial_epoch=initial_epoch, limit=config.limit)
    echo(f"      {data.num_train_examples} search-train / {data.num_val_examples} "
         f"search-val images, {data.steps_per_epoch} steps per epoch, images "
         f"{tuple(data.info.input_shape)}, {data.info.num_classes} classes")
    echo(f"[2/3] building the supernet ({config.layers} cells, C={config.channels}, "
         f"k={config.k}, {config.method}, {keras.backend.backend()}) ...")
    keras.utils.set_random_seed(config.seed)
    model = build_search_model(config, data.info.input_shape, data.info.num_classes,
                               data.steps_per_epoch)
    if resume and checkpoint.is_file():
        state = load_checkpoint(checkpoint, model)
        echo(f"      resumed after epoch {state['epoch']}")
    echo("[3/3] searching; first the step is traced and compiled (~25 s for the paper's "
         "setting on 2 CPU cores) ...")
    callback = SearchRunCallback(run_dir, config, state, echo)
    callbacks = [callback]
    if _has_tensorflow():
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "logs")))
    model.fit(data.dataset, epochs=config.epochs, initial_epoch=initial_epoch,
              steps_per_epoch=data.steps_per_epoch, callbacks=callbacks, shuffle=False,
              verbose=verbose)
    if callback.diverged:
        raise SearchDiverged(
            f"Search stopped: {callback.diverged}. The last good checkpoint (epoch "
            f"{state['epoch']}) is in {run_dir}; lower --lr or --arch-lr and start again.")
    return _result_from_state(run_dir, started)


def _result_from_state(run_dir: Path, started: float) -> SearchResult:
    with np.load(run_dir / CHECKPOINT_FILE) as data:
        state = json.loads(str(data["state"]))
    genotype = Genotype.from_dict(state["genotypes"][-1]["genotype"])
    return SearchResult(genotype, run_dir, load_config(run_dir).dataset, state["history"],
                        time.time() - started)


def _has_tensorflow() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def collapse_report(genotype: Genotype) -> str:
    """Per cell: how many of its 8 chosen operations are parameter-free."""
    counts = genotype.parameter_free_counts()
    lines = [f"  cell {i} ({cell.type}): {n}/{len(cell.edges)} parameter-free"
             for i, (cell, n) in enumerate(zip(genotype.cells, counts))]
    return "collapse report:\n" + "\n".join(lines)
