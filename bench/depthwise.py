"""Depthwise convolution on JAX: XLA's grouped convolution against shifted products.

On JAX, ``swd_keras.kernels.depthwise_conv`` is
``swd_keras.backend.jax.kernels.depthwise_conv``: a sum of the kernel's shifted,
per-channel products, because XLA's CPU gradient of a grouped convolution is very slow.
This script times both, forward and forward + backward (``jax.jit(jax.grad(...))`` with
respect to input and kernel, median of ``--runs`` runs after compilation), and checks
that they agree.

Example:
    python bench/depthwise.py                        # 64x32x32x64, 5x5, depth multiplier 2
    python bench/depthwise.py --size 3 --multiplier 1 --strides 2 --json out.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=5, help="kernel size")
    parser.add_argument("--multiplier", type=int, default=2, help="depth multiplier")
    parser.add_argument("--strides", type=int, default=1, choices=[1, 2])
    parser.add_argument("--dilation", type=int, default=1, choices=[1, 2])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", metavar="OUT", help="also write the rows here")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.input_size, args.channels, args.size, args.multiplier,
           args.runs) < 1:
        parser.error("sizes and --runs must be positive integers.")
    if args.strides == 2 and args.dilation == 2:
        parser.error("--strides 2 with --dilation 2 is not a convolution keras computes.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import jax.numpy as jnp
    import numpy as np
    from keras import ops

    from swd_keras.backend.jax.kernels import depthwise_conv

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch_size, args.input_size, args.input_size,
                                     args.channels)).astype("float32"))
    kernel = jnp.asarray(rng.normal(size=(args.size, args.size, args.channels,
                                          args.multiplier)).astype("float32"))
    options = {"strides": args.strides, "dilation_rate": args.dilation}
    versions = {
        "xla grouped conv": lambda x, k: ops.depthwise_conv(x, k, padding="same", **options),
        "shifted products": lambda x, k: depthwise_conv(x, k, **options),
    }

    def timed(fn):
        """(compile + first run seconds, median run seconds, result)."""
        start = time.perf_counter()
        result = jax.block_until_ready(fn(x, kernel))
        first = time.perf_counter() - start
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            jax.block_until_ready(fn(x, kernel))
            times.append(time.perf_counter() - start)
        return first, statistics.median(times), result

    rows, results = [], {}
    print("| version | pass | compile + first s | median ms |")
    print("| --- | --- | ---: | ---: |")
    for name, conv in versions.items():
        loss = lambda x, k, conv=conv: jnp.sum(conv(x, k) ** 2)  # noqa: E731
        for part, fn in (("forward", jax.jit(conv)),
                         ("forward + backward", jax.jit(jax.grad(loss, argnums=(0, 1))))):
            first, median, results[name, part] = timed(fn)
            rows.append({"version": name, "pass": part, "first_s": round(first, 3),
                         "median_ms": round(1000 * median, 2)})
            print(f"| {name} | {part} | {first:.2f} | {1000 * median:.1f} |", flush=True)
    difference = max(
        float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-12))
        for part in ("forward", "forward + backward")
        for a, b in zip(jax.tree_util.tree_leaves(results["xla grouped conv", part]),
                        jax.tree_util.tree_leaves(results["shifted products", part])))
    print(f"largest relative difference (outputs and gradients): {difference:.2e}")
    if args.json:
        from swd_keras.runs import atomic_write_json

        atomic_write_json(args.json, {"date": time.strftime("%Y-%m-%d"), "args": vars(args),
                                      "rows": rows, "max_relative_difference": difference})
    return 0 if difference < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
