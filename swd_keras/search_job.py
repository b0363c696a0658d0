"""A whole search run: config, data, model, epochs, checkpoints, genotypes, resume.

The run folder (``swd_keras.runs``) holds ``config.json`` (the record), ``checkpoint.npz``
(the last completed epoch: model, both optimizers, edge-weight accumulators, history,
genotypes), ``history.csv``, ``genotypes.jsonl`` (one line per epoch), ``genotype.json``
and ``genotype.png`` (the latest), and ``logs/`` (TensorBoard). Every file is written
atomically, so a run killed at any moment resumes from its last completed epoch and ends
with the genotype an unbroken run gives.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from swd_keras.data.run_config import DatasetRunConfig
from swd_keras.distribute import check_devices, data_parallel, replica_count
from swd_keras.genotype import Genotype
from swd_keras.runs import (
    CHECKPOINT_FILE,
    RunCallback,
    RunDiverged,
    atomic_write_text,
    check_new_run_folder,
    checkpoint_state,
    completed_epochs,
    load_checkpoint,
    non_finite,
    read_run,
    resume_run,
    start_run,
)

PRECISIONS = ("float32", "mixed_bfloat16")
"""Compute dtypes of the search. float16 would need loss scaling inside the two-optimizer
step; bfloat16 keeps float32's range and needs none (GPUs from Ampere on, recent CPUs)."""


@dataclasses.dataclass(frozen=True)
class SearchConfig(DatasetRunConfig):
    """Every setting of a search; the defaults are the paper's (SPEC §1-4).

    Validated when made (``validate``): a bad setting raises a ValueError naming it.
    """

    dataset: Any = "cifar10"
    """A built-in name, ``tfds:NAME``, an image folder, an ``.npz`` file or an
    ``ArrayDataset`` (``swd_keras.data.sources.FORMS``); paths are made absolute."""
    data_dir: str | None = None
    image_size: tuple[int, int] | None = None
    """``(height, width)`` a user's images are resized to [default: their own]."""
    test_dir: str | None = None
    """An image folder's test folder [default: ``DATASET/test``, else ``holdout``]."""
    holdout: float | None = None
    """The fraction held out as the test split where a user's dataset has none [0.1]."""
    validation: float = 0.0
    """The fraction of the training split set aside, unseen by the search, as the
    validation split a tuning trial's retraining is scored on (0 for none)."""
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
    ua_reduction: int = 2
    """UA's MLP channel reduction ratio r_ua (SPEC §2)."""
    la_reduction: int = 8
    """LA's MLP channel reduction ratio r_la (SPEC §2)."""
    jit: bool | None = None
    precision: str = "float32"
    remat: bool | str = "auto"
    limit: int | None = None
    primitives: tuple[str, ...] | None = None
    """The candidate operations (default: the paper's 8, ``swd_keras.ops.PRIMITIVES``)."""
    primitives_module: str | None = None
    """A module or ``.py`` file that registers users' primitives
    (``swd_keras.ops.import_primitives``); imported again when the run resumes."""
    devices: int | str = 1
    """``"all"`` or a device count: the replicas the global ``batch_size`` is split over
    (``swd_keras.distribute.data_parallel``)."""

    REQUIRED = ("dataset", "epochs", "batch_size", "channels", "layers", "k", "mode", "method",
                "seed")

    def __post_init__(self) -> None:
        if self.primitives is not None:  # JSON gives a list; a tuple keeps the config hashable
            object.__setattr__(self, "primitives", tuple(self.primitives))
        object.__setattr__(self, "devices", check_devices(self.devices))
        self._check_data_fields()
        super().__post_init__()

    def validate(self) -> SearchConfig:
        """Raises a ValueError naming the first bad setting; returns self."""
        from swd_keras.ops import check_primitives, import_primitives
        from swd_keras.search import MODES
        from swd_keras.supernet import METHODS, REMATERIALIZE, check_channels

        remat_choices = ("auto", *REMATERIALIZE)

        checks = [
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
            (min(self.ua_reduction, self.la_reduction) >= 1,
             f"ua_reduction and la_reduction must be at least 1, got {self.ua_reduction} "
             f"and {self.la_reduction}"),
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
        if self.primitives_module is not None:
            import_primitives(self.primitives_module)
        if self.primitives is not None:
            check_primitives(self.primitives)
        return self


def resolve_remat(remat: bool | str) -> bool | str:
    """``build_supernet``'s ``rematerialize`` for a config's ``remat``: ``"auto"`` is the
    running backend's choice (``swd_keras.rematerialize.auto_setting``)."""
    from swd_keras.rematerialize import auto_setting

    return auto_setting() if remat == "auto" else remat


SearchDiverged = RunDiverged
"""The search's loss became NaN or infinite (``swd_keras.runs.RunDiverged``)."""


def load_config(run_dir: str | Path) -> SearchConfig:
    """The config of the search run in ``run_dir``, or a ValueError saying it is not one."""
    return SearchConfig.from_json(read_run(run_dir, "search")["config"])


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
            la_pooling=config.la_pooling, ua_reduction=config.ua_reduction,
            la_reduction=config.la_reduction, upper_attention=config.upper_attention,
            lower_attention=config.lower_attention,
            rematerialize=resolve_remat(config.remat),
            **({} if config.primitives is None else {"primitives": config.primitives}))
    finally:
        keras.config.set_dtype_policy(previous_policy)
    # A fixed name: checkpoints key variables by path, and Keras numbers a second
    # model of a default name in the same process.
    model = SWDSearchModel(supernet, mode=config.mode, method=config.method,
                           name="swd_search_model")

    def sgd(lr, name):
        schedule = EpochCosineDecay(lr, config.lr_min, config.epochs, steps_per_epoch)
        return TorchSGD(schedule, momentum=config.momentum, weight_decay=config.weight_decay,
                        global_clipnorm=config.grad_clip, name=name)

    model.compile(weights_optimizer=sgd(config.lr, "weights_sgd"),
                  attention_optimizer=sgd(config.arch_lr, "attention_sgd"),
                  jit_compile="auto" if config.jit is None else config.jit)
    return model


# -- callbacks --------------------------------------------------------------------------

class SearchRunCallback(RunCallback):
    """Per epoch: derive, log and write the genotype; record the history; checkpoint
    (``RunCallback``). Per step: stop at once on a non-finite loss."""

    def __init__(self, run_dir: Path, config: SearchConfig, state: dict,
                 echo: Callable[[str], None] = print):
        super().__init__(run_dir, state)
        self.config, self.echo = config, echo
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
        bad = non_finite({"loss": (logs or {}).get("loss", 0.0)})
        if bad:
            self.stop(f"the training {bad} at step {batch + 1}")

    def record(self, epoch: int, row: dict[str, float]) -> None:
        genotype = self.model.genotype(normalize=self.config.normalization)
        self.state["genotypes"].append({"epoch": epoch, "genotype": genotype.to_dict()})
        if self.chief:
            write_genotypes(self.run_dir, self.state["genotypes"], genotype)
        self._epoch_line = f"epoch {epoch}: {genotype}"


def write_genotypes(run_dir: Path, genotypes: list[dict], genotype: Genotype) -> None:
    """genotypes.jsonl (every epoch's), genotype.json and genotype.png (the latest)."""
    from swd_keras.plot import plot_genotype

    atomic_write_text(run_dir / "genotypes.jsonl",
                      "".join(json.dumps(line) + "\n" for line in genotypes))
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
               verbose: str | int = "auto", devices: str | int | None = None,
               dataset=None) -> SearchResult:
    """Runs (or resumes) a search and returns its final genotype.

    Data-parallel over ``config.devices`` (``swd_keras.distribute.data_parallel``): every
    process searches, only the chief writes the run folder, and every process resumes
    from the same checkpoint, so the folder must be shared between hosts.

    Args:
        config: the settings (ignored when resuming: the run folder's config is used).
        run_dir: the run folder; a new run refuses a folder that is not empty.
        resume: continue the run in ``run_dir`` from its last completed epoch, on the
            backend it started on.
        echo: where progress lines go.
        verbose: Keras' progress-bar verbosity.
        devices: replaces the config's ``devices`` for this call (``"all"`` or a count);
            None keeps it (a resumed run: the recorded one). A step on N replicas equals
            the one-device step on the same global batch, so a run may resume on another
            device count; ``config.json`` keeps the count it started with.
        dataset: when resuming a run made from an ``ArrayDataset``, the same arrays
            again (checked against the run's record); None otherwise.

    Returns:
        A ``SearchResult`` with the genotype of the last epoch.

    Raises:
        ValueError: a bad setting or run folder, a resume on another backend than the
            run started on, devices that do not exist or a batch that does not split
            over them, unavailable data, or (resuming) data other than the run's;
            nothing is written then.
        SearchDiverged: the loss became NaN/inf (the last good checkpoint is kept).

    Example:
        >>> run_search(SearchConfig(dataset="digits", devices=2), "runs/digits")
    """
    from swd_keras.data import check_same_data, run_record, search_data
    from swd_keras.data.sources import recorded, with_arrays
    from swd_keras.training.config import raw_pixel_max

    run_dir, started = Path(run_dir), time.time()
    record = {}
    if resume:
        record = resume_run(run_dir, "search")
        config = SearchConfig.from_json(with_arrays(record["config"], dataset))
    else:
        config = config or SearchConfig()
        # Every process checks before the first collective step (variable creation), so
        # no process can see the chief's config.json here.
        check_new_run_folder(run_dir)
    if devices is not None:
        config = dataclasses.replace(config, devices=devices)
    replica_count(config.devices, config.batch_size)
    initial_epoch = completed_epochs(run_dir) if resume else 0
    if initial_epoch >= config.epochs:
        echo(f"{run_dir} already finished all {config.epochs} epochs.")
        return _result(run_dir, config, started)

    with data_parallel(config.devices):
        echo(f"[1/3] loading {recorded(config.dataset)} ...")
        data = search_data(config.dataset, config.batch_size, seed=config.seed,
                           data_dir=config.data_dir, epochs=config.epochs,
                           initial_epoch=initial_epoch, limit=config.limit,
                           image_size=config.image_size, test_dir=config.test_dir,
                           holdout=config.holdout, validation=config.validation)
        check_same_data(record, data.info, run_dir)
        echo(f"      {data.num_train_examples} search-train / {data.num_val_examples} "
             f"search-val images, {data.steps_per_epoch} steps per epoch, images "
             f"{tuple(data.info.input_shape)}, {data.info.num_classes} classes")
        echo(f"[2/3] building the supernet ({config.layers} cells, C={config.channels}, "
             f"k={config.k}, {config.method}, {keras.backend.backend()}) ...")
        keras.utils.set_random_seed(config.seed)
        model = build_search_model(config, data.info.input_shape, data.info.num_classes,
                                   data.steps_per_epoch)
        state = {"epoch": 0, "history": [], "genotypes": []}
        if initial_epoch:
            state = load_checkpoint(run_dir / CHECKPOINT_FILE, model)
            echo(f"      resumed after epoch {state['epoch']}")
        callback = SearchRunCallback(run_dir, config, state, echo)
        if not resume and callback.chief:
            start_run(run_dir, "search", config,
                      **run_record(data.info, raw_pixel_max(config.dataset)))
        echo("[3/3] searching; first the step is traced and compiled (~25 s for the paper's "
             "setting on 2 CPU cores) ...")
        callbacks = [callback]
        if callback.chief and _has_tensorflow():
            callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "logs")))
        model.fit(data.dataset, epochs=config.epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=data.steps_per_epoch, callbacks=callbacks, shuffle=False,
                  verbose=verbose)
    if callback.diverged:
        raise callback.error("lower --lr or --arch-lr and start again")
    return _result(run_dir, config, started, state)


def _result(run_dir: Path, config: SearchConfig, started: float,
            state: dict | None = None) -> SearchResult:
    """The result from the job state: this process's own (a worker may finish before
    the chief has written the last checkpoint), else the run's checkpoint."""
    from swd_keras.data.sources import recorded

    state = state or checkpoint_state(run_dir)
    genotype = Genotype.from_dict(state["genotypes"][-1]["genotype"])
    return SearchResult(genotype, run_dir, recorded(config.dataset), state["history"],
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
