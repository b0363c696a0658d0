"""Cross-replica reductions on TensorFlow (``tf.distribute``), for ``swd_keras.replicas``.

A ``tf.distribute`` strategy runs the step once per replica, each on its local batch;
the replica context's ``all_reduce`` combines a value over all replicas (of every
worker, under ``MultiWorkerMirroredStrategy``). Its gradient is the all-reduce of the
upstream gradients, so a reduction inside the differentiated pass is differentiated
across replicas too.
"""

from __future__ import annotations

import tensorflow as tf

_OPS = {"sum": tf.distribute.ReduceOp.SUM, "mean": tf.distribute.ReduceOp.MEAN}


def num_replicas() -> int:
    """Replicas in sync of the current replica context; 1 outside a strategy's
    replica function and in cross-replica context (no per-replica values there)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def all_reduce(op: str, values):
    """``values`` (a tensor or a list of them) reduced with ``op`` (``"sum"`` or
    ``"mean"``) over the replicas of the current replica context, in one batched
    all-reduce."""
    return tf.distribute.get_replica_context().all_reduce(_OPS[op], values)


def batch_norm_synchronized() -> bool:
    """Whether a Keras ``BatchNormalization`` made now runs on several replicas: made
    under a ``tf.distribute`` strategy's scope (cross-replica context) with more than
    one replica in sync."""
    return (tf.distribute.has_strategy()
            and tf.distribute.get_strategy().num_replicas_in_sync > 1)


def squared_norms(tensors) -> tf.Tensor:
    """The squared L2 norm of each of ``tensors``, a vector: one ``L2Loss`` kernel
    (half the sum of squares) per tensor, where ``sum(square(t))`` is three graph
    operations (a square, a sum and its axes); gradient clipping takes it for each of
    the step's ~1,450 gradients. Doubling the halves is exact, and the kernel's sum
    equals ``Sum``'s bit for bit (tests/test_replicas.py compares the clipping with
    Keras' own)."""
    return 2.0 * tf.stack([tf.nn.l2_loss(t) for t in tensors])
