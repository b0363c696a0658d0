"""Data-parallel search: the reductions over replicas (``swd_keras.replicas``), and the
step on two replicas against the step on one device with the same global batch.

The two-replica runs are subprocesses (``tests/replicated_step.py``: device settings
come before TensorFlow or JAX starts), one per backend: TensorFlow's in the full
(TensorFlow) run, JAX's in the JAX backend run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from swd_keras import replicas

ROOT = Path(__file__).resolve().parents[1]
to_np = ops.convert_to_numpy


# ------------------------------------------------------------- one replica: identities


@pytest.mark.backend
def test_one_replica_reductions_are_the_identity():
    assert replicas.num_replicas() == 1
    assert not replicas.batch_norm_synchronized()
    x = ops.convert_to_tensor(np.arange(6.0, dtype="float32").reshape(2, 3))
    assert replicas.sum_over_replicas(x) is x
    assert replicas.mean_over_replicas(x) is x
    pair = [x, x * 2.0]
    assert replicas.sum_over_replicas(pair) is pair


@pytest.mark.backend
def test_one_replica_moments_are_keras_moments():
    rng = np.random.default_rng(3)
    x = ops.convert_to_tensor((rng.normal(size=(4, 3, 3, 5)) * 4 + 2).astype("float32"))
    for got, want in zip(replicas.moments(x, axes=(0, 1, 2)), ops.moments(x, axes=(0, 1, 2))):
        np.testing.assert_array_equal(to_np(got), to_np(want))


@pytest.mark.backend
@pytest.mark.parametrize("clip_norm", [0.5, 100.0])
def test_one_replica_clip_is_keras_global_clipnorm(clip_norm):
    rng = np.random.default_rng(4)
    grads = [ops.convert_to_tensor(rng.normal(size=shape).astype("float32"))
             for shape in ((3, 4), (5,))]
    clipped = replicas.clip_by_global_norm([grads[0], None, grads[1]], clip_norm)
    assert clipped[1] is None
    norm = np.sqrt(sum(float(np.sum(to_np(g).astype(np.float64) ** 2)) for g in grads))
    for got, g in zip([clipped[0], clipped[2]], grads):
        np.testing.assert_allclose(to_np(got), to_np(g) * min(1.0, clip_norm / norm), rtol=1e-6)
    # Bit for bit the clipping of a Keras optimizer with global_clipnorm: one SGD step
    # with learning rate 1 from zero is minus the clipped gradient.
    variables = [keras.Variable(np.zeros(g.shape, "float32")) for g in grads]
    keras.optimizers.SGD(1.0, global_clipnorm=clip_norm).apply(grads, variables)
    for got, v in zip([clipped[0], clipped[2]], variables):
        np.testing.assert_array_equal(to_np(got), -to_np(v))
    assert replicas.clip_by_global_norm([None], clip_norm) == [None]


# ------------------------------------------------------------ two replicas: the step


def _replicated_step(tmp_path, backend: str, cases: list) -> dict:
    out = tmp_path / "replicated.json"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "replicated_step.py"),
                             str(out), *cases], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


def _check_against_one_device(case: dict, steps: int) -> None:
    assert case["replicas"] == 2  # each variable really has two copies
    # Every replica holds the same weights, statistics, optimizer state, accumulators.
    assert case["replica_spread"] <= 1e-6, case
    # ...and they are the one-device step's, on the same global batches.
    assert case["state_difference"] <= 1e-4, case
    assert case["edge_weight_difference"] <= 1e-4, case
    assert case["log_difference"] <= 1e-4, case
    assert len(case["logs_many"]) == len(case["logs_one"]) == steps
    assert case["genotype_equal"]
    # The comparison means something: training moved most variables.
    assert case["variables_moved"] > case["variables"] // 2, case


def test_tensorflow_two_replicas_equal_one_device(tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the TensorFlow run covers tf.distribute (the JAX run, DataParallel)")
    results = _replicated_step(tmp_path, "tensorflow", ["bilevel", "joint"])
    _check_against_one_device(results["bilevel"], steps=3)
    _check_against_one_device(results["joint"], steps=1)
    # The clip was active: a per-replica clip (Keras' own) would have shown.
    assert results["bilevel"]["clip_ratio"] > 2.0


@pytest.mark.backend
def test_jax_two_devices_equal_one_device(tmp_path):
    if keras.backend.backend() != "jax":
        pytest.skip("keras.distribution.DataParallel is checked in the JAX run")
    # The bilevel step only: DataParallel compiles the one SPMD program whatever the
    # mode, and every XLA compile of a search step takes minutes on a CPU.
    results = _replicated_step(tmp_path, "jax", ["bilevel"])
    _check_against_one_device(results["bilevel"], steps=3)


def test_a_cross_replica_batch_norm_is_saved_as_a_plain_one():
    # A network trained on several TensorFlow replicas loads on one device and on
    # every backend: Keras refuses synchronized=True outside TensorFlow.
    if keras.backend.backend() != "tensorflow":
        pytest.skip("synchronized=True exists on TensorFlow only")
    from swd_keras.ops import make_batch_norm
    from swd_keras.replica_batch_norm import ReplicaBatchNormalization

    layer = ReplicaBatchNormalization(synchronized=True, center=False, scale=False)
    config = layer.get_config()
    assert "synchronized" not in config and not config["center"]
    clone = ReplicaBatchNormalization.from_config(config)
    assert clone.synchronized is False
    # One replica: Keras' own layer, unsynchronised.
    plain = make_batch_norm(True)
    assert type(plain) is keras.layers.BatchNormalization and plain.synchronized is False
