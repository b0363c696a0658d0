"""Retraining: PyTorch-style SGD, schedules, loss, drop-path schedule, checkpoints, resume."""

import csv
import json
import math

import keras
import numpy as np
import pytest

from swd_keras.network import build_network, cells_of, load_network
from swd_keras.optimizers import TorchSGD
from swd_keras.runs import completed_epochs
from swd_keras.training import (
    DropPathSchedule,
    LabelSmoothingCrossentropy,
    RetrainConfig,
    TrainingDivergedError,
    evaluate_network,
    fit_network,
    make_optimizer,
    set_drop_path_rate,
)

# ------------------------------------------------------------------------------ optimizer


def _torch_sgd_reference(weights, gradients, learning_rates, momentum, weight_decay, clip):
    """NumPy model of clip_grad_norm_ then torch.optim.SGD.step (dampening 0)."""
    weights = [w.astype(np.float64).copy() for w in weights]
    buffers = [np.zeros_like(w) for w in weights]
    for step_gradients, lr in zip(gradients, learning_rates):
        norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in step_gradients))
        scale = min(1.0, clip / norm)
        for i, g in enumerate(step_gradients):
            d = g * scale + weight_decay * weights[i]
            buffers[i] = momentum * buffers[i] + d
            weights[i] = weights[i] - lr * buffers[i]
    return weights


@pytest.mark.backend
def test_make_optimizer_matches_pytorch_rule_with_clipping_and_cosine():
    rng = np.random.default_rng(0)
    initial = [rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(4,)).astype("float32")]
    steps = 4
    # Large gradients on some steps so that clipping to norm 5 is exercised.
    gradients = [[rng.normal(size=w.shape).astype("float32") * (10.0 if s % 2 else 0.5)
                  for w in initial] for s in range(steps)]
    # Cosine from 0.1 to 0.01 over 3 epochs of 2 steps, constant within an epoch.
    rates = [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * (s // 2) / 3)) for s in range(steps)]
    variables = [keras.Variable(w) for w in initial]
    optimizer = make_optimizer(0.1, epochs=3, steps_per_epoch=2, momentum=0.9,
                               weight_decay=0.01, grad_clip=5.0, minimum_learning_rate=0.01)
    for step_gradients in gradients:
        optimizer.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in step_gradients],
                                      variables))
    expected = _torch_sgd_reference(initial, gradients, rates, 0.9, 0.01, 5.0)
    for variable, want in zip(variables, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), want, rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.backend
def test_torch_sgd_leaves_variables_without_gradient_alone():
    # torch.optim.SGD skips a parameter whose grad is None: no decay, no momentum step.
    rng = np.random.default_rng(1)
    initial = [rng.normal(size=shape).astype("float32") for shape in ((2, 3), (5,), (1, 1, 2, 2))]
    variables = [keras.Variable(w) for w in initial]
    optimizer = TorchSGD(0.05, momentum=0.9, weight_decay=0.01, global_clipnorm=1.0)
    optimizer.build(variables)
    present = [(0, 1, 2), (0, 2), (1,), (0, 1, 2)]
    weights = [w.astype(np.float64) for w in initial]
    buffers = [np.zeros_like(w) for w in weights]
    for indices in present:
        grads = {i: rng.normal(size=initial[i].shape).astype("float32") * 3 for i in indices}
        optimizer.apply([keras.ops.convert_to_tensor(grads[i]) for i in indices],
                        [variables[i] for i in indices])
        scale = min(1.0, 1.0 / math.sqrt(sum(float((g ** 2).sum()) for g in grads.values())))
        for i, g in grads.items():
            buffers[i] = 0.9 * buffers[i] + g * scale + 0.01 * weights[i]
            weights[i] = weights[i] - 0.05 * buffers[i]
    for variable, want in zip(variables, weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), want, rtol=1e-5,
                                   atol=1e-6)


def test_torch_sgd_tensorflow_step_graph_reads_the_learning_rate_once():
    # Per added variable the traced update adds one read (its weight decay) and one
    # L2Loss (its share of the clipping norm): the learning-rate variable is read once
    # per graph, not once per variable.
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the step graph is TensorFlow's")
    import tensorflow as tf

    def count(n):
        variables = [keras.Variable(np.ones((3, 2), "float32")) for _ in range(n)]
        optimizer = TorchSGD(0.1, momentum=0.9, weight_decay=0.01, global_clipnorm=1.0)
        optimizer.build(variables)
        step = tf.function(lambda grads: optimizer.apply(grads, variables))
        graph = step.get_concrete_function([tf.ones((3, 2))] * n).graph
        types = [op.type for op in graph.get_operations()]
        return types.count("ReadVariableOp"), types.count("L2Loss")

    (reads_3, norms_3), (reads_6, norms_6) = count(3), count(6)
    assert (reads_6 - reads_3, norms_3, norms_6) == (3, 3, 6)


def test_torch_sgd_fused_tensorflow_step_is_the_keras_ops_step(monkeypatch):
    # On TensorFlow, TorchSGD's update is one ResourceApplyMomentum per variable
    # (backend/tensorflow/sgd.py); it must be the keras.ops update up to the rounding
    # of a fused multiply-add (1 ulp per step).
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the fused momentum step is TensorFlow's")
    import tensorflow as tf

    from swd_keras import optimizers

    rng = np.random.default_rng(2)
    initial = [rng.normal(size=shape).astype("float32") for shape in ((3, 3, 4, 1), (7,))]
    gradients = [[rng.normal(size=w.shape).astype("float32") * 4 for w in initial]
                 for _ in range(3)]

    def run(fused, jit_compile=False):
        monkeypatch.setattr(optimizers, "_FUSED_SGD", fused)
        variables = [keras.Variable(w) for w in initial]
        optimizer = make_optimizer(0.1, epochs=2, steps_per_epoch=2, weight_decay=0.01,
                                   grad_clip=5.0)
        optimizer.build(variables)
        step = tf.function(lambda grads: optimizer.apply(grads, variables),
                           jit_compile=jit_compile)
        graph = step.get_concrete_function([tf.constant(g) for g in gradients[0]]).graph
        kinds = {op.type for op in graph.get_operations()}
        for step_gradients in gradients:
            step([tf.constant(g) for g in step_gradients])
        return [keras.ops.convert_to_numpy(v) for v in variables], kinds

    fused, fused_kinds = run(optimizers._FUSED_SGD)
    plain, plain_kinds = run(None)
    compiled, _ = run(optimizers._FUSED_SGD, jit_compile=True)  # XLA: fit(jit_compile=True)
    assert "ResourceApplyMomentum" in fused_kinds - plain_kinds
    for got, want, xla in zip(fused, plain, compiled):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(xla, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(plain[0], initial[0])


def test_make_optimizer_config_round_trip_keeps_coupled_decay():
    optimizer = make_optimizer(0.025, epochs=10, steps_per_epoch=5, weight_decay=3e-4,
                               grad_clip=5.0)
    clone = TorchSGD.from_config(optimizer.get_config())
    assert clone.get_config()["weight_decay"] == pytest.approx(3e-4)
    assert clone.weight_decay is None  # Keras' decoupled decay stays off
    assert clone.clip_norm == pytest.approx(5.0)
    assert clone.global_clipnorm is None  # Keras' own (per-replica) clipping stays off
    with pytest.raises(ValueError, match="minimum_learning_rate"):
        make_optimizer(0.01, 4, 10, minimum_learning_rate=0.1)


# ---------------------------------------------------------------------------------- loss


@pytest.mark.backend
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_label_smoothing_crossentropy_matches_numpy(smoothing):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 7)).astype("float32")
    labels = rng.integers(0, 7, size=(5,)).astype("int32")
    loss = LabelSmoothingCrossentropy(smoothing)(labels, logits)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    target = np.full((5, 7), smoothing / 7)
    target[np.arange(5), labels] += 1 - smoothing
    want = -(target * log_probs).sum(axis=1).mean()
    assert float(keras.ops.convert_to_numpy(loss)) == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------- drop path


def _rates(model):
    return [float(keras.ops.convert_to_numpy(cell.drop_path_rate)) for cell in cells_of(model)]


def test_drop_path_schedule_is_zero_first_and_linear_after():
    model = build_network("darts_v2", (8, 8, 1), 10, channels=4, layers=5, drop_path=0.3)
    assert _rates(model) == pytest.approx([0.3] * 5)  # the built rate until scheduled
    schedule = DropPathSchedule(0.2, epochs=10)
    schedule.set_model(model)
    for epoch, want in [(0, 0.0), (1, 0.02), (5, 0.1), (9, 0.18)]:
        schedule.on_epoch_begin(epoch)
        assert _rates(model) == pytest.approx([want] * 5)
        logs = {}
        schedule.on_epoch_end(epoch, logs)
        assert logs["drop_path_rate"] == pytest.approx(want)
    with pytest.raises(ValueError, match="max_rate"):
        DropPathSchedule(1.0, 10)
    with pytest.raises(ValueError, match="no retrain Cell"):
        set_drop_path_rate(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]), 0.1)


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_network_top_k_matches_numpy():
    rng = np.random.default_rng(2)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
    x = rng.normal(size=(37, 6)).astype("float32")
    y = rng.integers(0, 8, size=(37,)).astype("int32")
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 37, 10)]
    scores = evaluate_network(model, batches, top_k=(1, 5))
    logits = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
    order = np.argsort(-logits, axis=1)
    assert scores["examples"] == 37
    assert scores["top1"] == pytest.approx(np.mean(order[:, 0] == y))
    assert scores["top5"] == pytest.approx(np.mean([y[i] in order[i, :5] for i in range(37)]))


# --------------------------------------------------------------------------------- config


def test_retrain_config_validates():
    with pytest.raises(ValueError, match="epochs"):
        RetrainConfig("darts_v2", "digits", epochs=0)
    with pytest.raises(ValueError, match="drop_path"):
        RetrainConfig("darts_v2", "digits", drop_path=1.5)
    with pytest.raises(ValueError, match="min_learning_rate"):
        RetrainConfig("darts_v2", "digits", learning_rate=0.01, min_learning_rate=0.1)
    assert RetrainConfig("darts_v2", "imagenet2012").head == "imagenet"


# --------------------------------------------------------------------------- fit_network

TINY = dict(genotype="darts_v2", dataset="digits", epochs=2, batch_size=32, channels=4,
            layers=3, limit=64, drop_path=0.3)


class _PoisonAfterFirstEpoch(keras.callbacks.Callback):
    """Makes the second epoch's loss NaN (after the first epoch's checkpoint was saved)."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            kernel = self.model.get_layer("classifier").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


def test_fit_network_runs_checkpoints_and_resumes_exactly(tmp_path):
    config = RetrainConfig(**TINY)
    unbroken = fit_network(tmp_path / "unbroken", config, verbose=0)

    run = tmp_path / "unbroken"
    assert {p.name for p in run.iterdir()} >= {"config.json", "checkpoint.npz", "history.csv",
                                                "tensorboard", "model.keras", "results.json"}
    stored = json.loads((run / "config.json").read_text())
    assert stored["config"]["cutout"] == 4  # digits' default side, recorded as applied
    assert stored["preprocessing"]["pixel_max"] == 16.0
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # Drop path: 0 in epoch 0, max * 1 / 2 in epoch 1; cosine lr: 0.025 then 0.0125.
    assert [float(r["drop_path_rate"]) for r in rows] == pytest.approx([0.0, 0.15])
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([0.025, 0.0125])
    assert completed_epochs(run) == 2
    assert stored["backend"] == keras.backend.backend()
    assert unbroken["epochs"] == 2 and 0.0 <= unbroken["test_top1"] <= 1.0
    assert unbroken["test_examples"] == 64
    saved = json.loads((run / "results.json").read_text())
    assert saved["test_top1"] == pytest.approx(unbroken["test_top1"])

    # A run whose loss turns NaN in epoch 2 stops, keeps epoch 1's checkpoint and writes
    # no model; resuming it from that checkpoint reproduces the unbroken run exactly.
    broken = tmp_path / "broken"
    with pytest.raises(TrainingDivergedError,
                       match=r"loss became nan in epoch 2; .*checkpoint\.npz \(epoch 1\)"):
        fit_network(broken, config, verbose=0, callbacks=[_PoisonAfterFirstEpoch()])
    assert completed_epochs(broken) == 1
    assert not (broken / "model.keras").exists() and not (broken / "results.json").exists()
    resumed = fit_network(broken, resume=True, verbose=0)
    assert resumed["final_epoch_metrics"] == unbroken["final_epoch_metrics"]
    assert (broken / "history.csv").read_text() == (run / "history.csv").read_text()
    a, b = load_network(run / "model.keras"), load_network(broken / "model.keras")
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(*map(keras.ops.convert_to_numpy, (wa, wb)))
    assert resumed["test_top1"] == unbroken["test_top1"]

    # A finished run resumes to its stored results; a used folder is refused for a new run.
    assert fit_network(run, resume=True, verbose=0) == saved
    with pytest.raises(ValueError, match="already exists"):
        fit_network(run, config, verbose=0)


def test_fit_network_rejects_bad_input_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unknown genotype"):
        fit_network(tmp_path / "a", RetrainConfig(**{**TINY, "genotype": "nope"}))
    with pytest.raises(ValueError, match=r"5 cells .*layers=4"):
        fit_network(tmp_path / "b",
                    RetrainConfig(**{**TINY, "genotype": "swd_nas_paper", "layers": 4}))
    with pytest.raises(ValueError, match="not a retraining run folder"):
        fit_network(tmp_path / "c", resume=True)
    assert not any(tmp_path.iterdir())
