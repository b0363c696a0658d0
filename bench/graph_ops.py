"""Counts the TensorFlow graph operations of the search network's pieces.

Tracing time, Grappler time and the executor's memory grow with the number of graph
operations, so the count is the deterministic measure of how cheap the search graph
is to start (timings on a shared machine are noisy). Counted with ``tf.function``
tracing only (nothing runs):

    per-op layers   the candidate ops of one edge as separate ops.py layers
    candidate ops   the same ops as one ``CandidateOps``
    edge            one ``SWDMixedOp``, forward, and forward + gradients
    edges together  the 8 edges leaving a cell's two inputs, by one ``EdgeGroup``
    supernet        forward, forward + gradients, and the whole bilevel train step

Example:
    python bench/graph_ops.py                      # a tiny network (8x8x3, C=8, 3 cells)
    python bench/graph_ops.py --channels 16 --cells 5 --k 4 --input-size 32 --json o.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=3)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=8)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--json", metavar="OUT", help="also write the counts here")
    args = parser.parse_args(argv)
    if min(args.cells, args.k, args.batch_size, args.input_size, args.channels) < 1:
        parser.error("sizes must be positive integers.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from swd_keras.edge_group import EdgeGroup
    from swd_keras.mixed_op import SWDMixedOp
    from swd_keras.ops import PRIMITIVES, make_op
    from swd_keras.search import SWDSearchModel
    from swd_keras.supernet import build_supernet

    def count(fn, *inputs):
        function = tf.function(tf.autograph.experimental.do_not_convert(fn))
        graph = function.get_concrete_function(*inputs).graph.as_graph_def()
        # With the functions it calls (the train step's shared forward/backward).
        return len(graph.node) + sum(len(f.node_def) for f in graph.library.function)

    def with_gradients(layer, fn):
        def run(*inputs):
            with tf.GradientTape() as tape:
                out = fn(*inputs)
                loss = tf.add_n([tf.reduce_sum(t) for t in tf.nest.flatten(out)])
            return tape.gradient(loss, layer.trainable_variables)
        return run

    c, size, batch = args.channels, args.input_size, args.batch_size
    ck = c // args.k
    counts = {}
    x_ops = tf.zeros((batch, size, size, ck))
    per_op = [make_op(p, ck, 1, False, pool_batch_norm=True) for p in PRIMITIVES]
    for op in per_op:
        op.build(x_ops.shape)
    counts["per_op_layers_forward"] = count(
        lambda x: [op(x, training=True) for op in per_op], x_ops)

    x = tf.zeros((batch, size, size, c))
    edge = SWDMixedOp(c, 1, k=args.k)
    edge.build(x.shape)
    counts["candidate_ops_forward"] = count(
        lambda x: edge.candidate_ops(x, training=True), x_ops)
    counts["edge_forward"] = count(lambda x: edge(x, training=True), x)
    counts["edge_forward_gradients"] = count(
        with_gradients(edge, lambda x: edge(x, training=True)), x)
    group = [SWDMixedOp(c, 1, k=args.k) for _ in range(8)]
    for member in group:
        member.build(x.shape)
    counts["8_edges_alone_forward"] = count(
        lambda x0, x1: [e(xi, training=True) for e, xi in zip(group, [x0, x1] * 4)], x, x)
    together = EdgeGroup(group, sources=[0, 1] * 4)
    counts["8_edges_together_forward"] = count(
        lambda x0, x1: together([x0, x1], training=True), x, x)

    images = tf.zeros((batch, size, size, 3))
    labels = tf.zeros((batch,), tf.int32)
    keras.utils.set_random_seed(0)
    supernet = build_supernet((size, size, 3), 10, channels=c, layers=args.cells, k=args.k)
    model = SWDSearchModel(supernet)
    model.compile()
    counts["trainable_variables"] = len(model.trainable_variables)
    counts["supernet_forward"] = count(lambda x: supernet(x, training=True)[0], images)

    def loss(x, y):
        return model.search_loss(y, supernet(x, training=True)[0])

    counts["supernet_forward_gradients"] = count(with_gradients(model, loss), images, labels)
    start = time.perf_counter()
    counts["train_step"] = count(
        lambda x, y: model.train_step(((x, y), (x, y))), images, labels)
    counts["train_step_trace_s"] = round(time.perf_counter() - start, 1)
    for name, value in counts.items():
        print(f"{name:32s} {value}")
    if args.json:
        from swd_keras.runs import atomic_write_json

        atomic_write_json(args.json, {"date": time.strftime("%Y-%m-%d"), **vars(args),
                                      **counts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
