"""The search step on two replicas against the same step on one device, in one process.

Run by ``tests/test_replicas.py`` as ``python tests/replicated_step.py OUT.json`` with
``KERAS_BACKEND`` set: device settings must be made before TensorFlow or JAX starts,
so this cannot run inside the test process. On TensorFlow the host CPU is split into
two logical devices under ``tf.distribute.MirroredStrategy``; on JAX two host devices
are forced (``XLA_FLAGS``) under ``keras.distribution.DataParallel``.

For each case (``CASES``: 3 bilevel steps, 1 joint-mode step; and, by hand only, a
bilevel step with rematerialized cells) one model is trained on one device and one
with the same initial values on two replicas, on the same global batches; the JSON
written holds, per case, the largest differences
between the two replicas' copies of every variable and between the two runs, and
facts that show the comparison means something (the clip was active, the variables
moved, the variables were replicated).
"""

from __future__ import annotations

import json
import os
import sys
import time

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
REPLICAS = 2
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={REPLICAS}")

import tensorflow as tf  # noqa: E402

if BACKEND == "tensorflow":
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
else:  # JAX: tf.data only.
    tf.config.set_visible_devices([], "GPU")

import keras  # noqa: E402
import numpy as np  # noqa: E402

STRATEGY = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
            if BACKEND == "tensorflow" else None)

from swd_keras.optimizers import TorchSGD  # noqa: E402
from swd_keras.search import SWDSearchModel  # noqa: E402
from swd_keras.supernet import build_supernet  # noqa: E402

GLOBAL_BATCH = 8
# One op of each kind of BatchNorm: a sep_conv's (from its output), a pool's, the
# stride-2 skip_connect's (factorized reduce); and none. One cell (a reduction cell, so
# the factorized reduce is in it): the replicas' reductions do not depend on the cell
# count, and tracing the step on two replicas grows with it.
PRIMITIVES = ("sep_conv_3x3", "skip_connect", "max_pool_3x3", "none")
# Small enough that every step clips, so clipping each replica's share of the
# gradient (Keras' own) instead of the whole step's would show.
CLIP = 0.1
to_np = keras.ops.convert_to_numpy


def make_model(mode: str, rematerialize: bool) -> SWDSearchModel:
    keras.utils.set_random_seed(0)
    net = build_supernet((8, 8, 3), 10, channels=4, layers=1, k=2, primitives=PRIMITIVES,
                         rematerialize=rematerialize)
    model = SWDSearchModel(net, mode=mode)
    model.compile(
        weights_optimizer=TorchSGD(0.1, momentum=0.9, weight_decay=3e-4, global_clipnorm=CLIP),
        attention_optimizer=TorchSGD(0.1, momentum=0.9, weight_decay=3e-4,
                                     global_clipnorm=CLIP))
    return model


def state(model: SWDSearchModel) -> list:
    """The model's and both optimizers' variables, in a fixed order."""
    return list(model.variables) + list(model.optimizer.variables)


def data(steps: int):
    rng = np.random.default_rng(7)

    def split():
        return (rng.normal(size=(steps * GLOBAL_BATCH, 8, 8, 3)).astype("float32"),
                rng.integers(0, 10, steps * GLOBAL_BATCH).astype("int32"))

    train, val = split(), split()
    return train, tf.data.Dataset.from_tensor_slices((train, val)).batch(GLOBAL_BATCH)


class StepLosses(keras.callbacks.Callback):
    """The logs after every step (Keras' running means over the epoch)."""

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(v) for k, v in logs.items()})


def train(model: SWDSearchModel, steps: int) -> dict:
    _, dataset = data(steps)
    losses = StepLosses()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[losses], verbose=0)
    return {"logs": losses.logs, "state": [to_np(v.value).copy() for v in state(model)],
            "edge_weights": model.edge_weights(), "genotype": model.genotype()}


def initial_clip_ratio(model: SWDSearchModel) -> float:
    """The global norm of the first training batch's weight gradient over ``CLIP``
    (TensorFlow)."""
    (x, y), _ = data(1)
    x, y = x[:GLOBAL_BATCH], y[:GLOBAL_BATCH]
    with tf.GradientTape() as tape:
        loss = model.search_loss(y, model(x, training=True)[0])
    grads = tape.gradient(loss, model.weight_variables)
    return float(np.sqrt(sum(float(np.sum(to_np(g) ** 2)) for g in grads))) / CLIP


def replica_copies(variable) -> list:
    """Each replica's copy of ``variable``, as NumPy."""
    if BACKEND == "tensorflow":
        return [component.numpy() for component in variable.value.values]
    return [np.asarray(shard.data) for shard in variable.value.addressable_shards]


def distributed(build):
    """``build()`` under the two-replica strategy or distribution."""
    if BACKEND == "tensorflow":
        # One strategy for every case (swd_keras.backend.tensorflow.distribute._strategy).
        with STRATEGY.scope():
            return build()
    import jax

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    return build()


def progress(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def compare(mode: str, steps: int, rematerialize: bool) -> dict:
    if BACKEND == "jax":
        keras.distribution.set_distribution(None)
    single = make_model(mode, rematerialize)
    initial = [to_np(v.value).copy() for v in state(single)]
    # An eager TensorFlow gradient (JAX's eager gradient of the supernet is slow).
    clip_ratio = initial_clip_ratio(single) if BACKEND == "tensorflow" else None
    for variable, value in zip(state(single), initial):
        variable.assign(value)
    progress(f"{mode}: one device")
    one = train(single, steps)
    progress(f"{mode}: {REPLICAS} replicas")

    model = distributed(lambda: make_model(mode, rematerialize))
    variables = state(model)
    assert [tuple(v.shape) for v in variables] == [x.shape for x in initial]
    for variable, value in zip(variables, initial):
        variable.assign(value)
    many = train(model, steps)

    progress(f"{mode}: done")
    copies = [replica_copies(v) for v in variables]
    spread = max(float(np.max(np.abs(c[0] - c[i]), initial=0.0))
                 for c in copies for i in range(1, len(c)))
    difference = [float(np.max(np.abs(a - b), initial=0.0))
                  for a, b in zip(one["state"], many["state"])]
    worst = int(np.argmax(difference))
    moved = [float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(one["state"], initial)]
    return {
        "replicas": min(len(c) for c in copies),
        "replica_spread": spread,
        "state_difference": difference[worst],
        "worst_variable": variables[worst].path,
        "variables_moved": sum(m > 0 for m in moved),
        "variables": len(moved),
        "edge_weight_difference": float(np.max(np.abs(one["edge_weights"]
                                                      - many["edge_weights"]))),
        "log_difference": max(abs(a[k] - b[k]) for a, b in zip(one["logs"], many["logs"])
                              for k in a),
        "logs_one": one["logs"],
        "logs_many": many["logs"],
        "genotype_equal": one["genotype"] == many["genotype"],
        "clip_ratio": clip_ratio,
    }


CASES = {"bilevel": ("bilevel", 3, False), "joint": ("joint", 1, False),
         "bilevel_remat": ("bilevel", 1, True)}


def main(out: str, cases: list) -> None:
    """Runs ``cases`` (names in ``CASES``), writing ``out`` after each."""
    results = {}
    for name in cases:
        mode, steps, rematerialize = CASES[name]
        results[name] = compare(mode, steps, rematerialize)
        with open(out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["bilevel", "joint"])
