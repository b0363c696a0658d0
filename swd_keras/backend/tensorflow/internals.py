"""The TensorFlow internals the search step uses, each behind a version check with a
public fallback that gives the same step.

Two pieces, both for the memory and the time before the first step at the paper's
settings (measured in docs/BENCHMARKS.md):

``op_stack_traces``
    ``fit`` traces the step without recording each op's Python stack
    (``without_op_stack_traces``; TensorFlow's ``tf_stack`` module has no public
    switch). Fallback: the stacks are recorded, as TensorFlow does by default.
``graph_release``
    ``fit`` runs the step through ``TrainFunction``, which lets the traced graphs go
    (``ConcreteFunction.inference_fn``, ``AtomicFunction.call_preflattened`` and
    ``_cached_graph``), and the step's custom gradients are unregistered once traced
    (``registered_gradients_dropped``, TensorFlow's gradient registry). Fallback:
    Keras' own train function, whose graphs live as long as the model's train
    function.

A piece is used only on the TensorFlow versions it was tested with (``TESTED``) and
where the attributes it reads exist; the environment variable ``SWD_KERAS_TF_INTERNALS``
narrows that further: ``none`` for none, or a comma-separated list of the pieces to use.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os

import tensorflow as tf
from tensorflow.python.eager.polymorphic_function import atomic_function, concrete_function
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.util import tf_stack

PIECES = ("op_stack_traces", "graph_release")
# (first, last) TensorFlow minor versions whose internals these pieces were tested with.
TESTED = ((2, 16), (2, 21))
ENVIRONMENT_VARIABLE = "SWD_KERAS_TF_INTERNALS"


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def _attributes_present(piece: str) -> bool:
    if piece == "op_stack_traces":
        return callable(getattr(tf_stack, "extract_stack", None))
    return (isinstance(getattr(getattr(tf_ops, "gradient_registry", None), "_registry", None),
                       dict)
            and hasattr(concrete_function.ConcreteFunction, "inference_fn")
            and hasattr(atomic_function.AtomicFunction, "call_preflattened"))


def enabled(piece: str) -> bool:
    """Whether ``piece`` (one of ``PIECES``) is used in this process."""
    if piece not in PIECES:
        raise ValueError(f"piece must be one of {PIECES}, got {piece!r}.")
    wanted = os.environ.get(ENVIRONMENT_VARIABLE)
    if wanted is not None:
        names = {name.strip() for name in wanted.split(",") if name.strip()} - {"none"}
        unknown = names - set(PIECES)
        if unknown:
            raise ValueError(f"{ENVIRONMENT_VARIABLE} must be 'none' or a comma-separated "
                             f"list of {PIECES}, got {wanted!r}.")
        if piece not in names:
            return False
    first, last = TESTED
    return first <= _version(tf.__version__) <= last and _attributes_present(piece)


@contextlib.contextmanager
def without_op_stack_traces():
    """Traces graph operations without recording the Python stack of each.

    TensorFlow keeps every traced op's Python stack, for the "defined at" lines of
    runtime errors, and copies the stacks as strings into each graph it instantiates:
    a quarter of a GB of the search step's peak and seconds before its first step. The
    step's ops are this package's; a runtime error still names the failing op by its
    layer path (``cell_0/edge_3/...``). Restored on leaving, also on an exception.
    """
    if not enabled("op_stack_traces"):
        yield
        return
    extract = tf_stack.extract_stack
    # A stack level above any real depth captures no frames.
    tf_stack.extract_stack = lambda stacklevel=1: extract(stacklevel=1 << 20)
    try:
        yield
    finally:
        tf_stack.extract_stack = extract


@contextlib.contextmanager
def registered_gradients_dropped():
    """Unregisters the gradient functions registered while inside (with
    ``graph_release``).

    In a graph, ``tf.custom_gradient`` (``normalize_from_output``, and the recomputed
    edge groups) registers each call's gradient function under a new name in
    TensorFlow's global gradient registry, for good. The function's closure holds
    forward tensors, and with them their whole graph: without this, every traced step
    stays in memory however its functions are dropped. Used around the step, which
    runs in a graph only while traced, so every way of tracing it is covered; once its
    backward graph is built, the names are never looked up again.
    """
    if not enabled("graph_release"):
        yield
        return
    registry = tf_ops.gradient_registry._registry
    before = set(registry)
    try:
        yield
    finally:
        for name in set(registry) - before:
            del registry[name]


class TrainFunction:
    """``model.train_function`` of ``fit`` on a ``tf.data`` iterator: one step per call
    of a traced graph whose Python side is let go once it is traced.

    A ``tf.function`` keeps each traced graph for as long as it lives: every traced
    operation and tensor as a Python object and a C++ node, tens of thousands of them
    for the paper's search step, a quarter of a GB of its peak (docs/BENCHMARKS.md).
    The runtime runs the function definitions it was handed at tracing, so this
    traces the step once per input signature, keeps the runtime function and its
    captured variables, and drops the graphs before the step first runs. A new
    signature (another batch shape) traces again. Python iterators (``train_on_batch``)
    go to Keras' own function.

    Args:
        model: the ``SWDSearchModel``.
        keras_function: Keras' ``train_function``, for inputs that are not a
            ``tf.data.Iterator``.
        release: called after each tracing, before the graphs are collected: drops
            the caller's own references to them.

    Call arguments:
        iterator: the epoch's iterator; one batch is read from it.

    Returns:
        The step's logs (a dict of scalar tensors).
    """

    def __init__(self, model, keras_function, release=lambda: None):
        self.model, self.keras_function, self.release = model, keras_function, release
        self._traced = {}

    def __call__(self, iterator):
        if not isinstance(iterator, tf.data.Iterator):
            return self.keras_function(iterator)
        signature = tf.type_spec_from_value(iterator)
        if signature not in self._traced:
            self._traced[signature] = self._trace(iterator)
        runtime_function, captures = self._traced[signature]
        inputs = runtime_function.function_type.unpack_inputs(
            runtime_function.function_type.bind(iterator))
        return runtime_function.call_preflattened(inputs + captures)

    def _trace(self, iterator):
        runtime_function, captures = _trace_step(self.model, iterator)
        # The graphs hung on the tf.functions (gone with _trace_step's frame) and on
        # each runtime function's cached graph, emptied here. The runtime functions
        # stay alive (and registered) through their parent's children.
        self.release()
        functions = [runtime_function]
        while functions:
            function = functions.pop()
            function._cached_graph = None
            functions.extend(function.children)
        gc.collect()
        _return_free_heap_to_the_system()
        return runtime_function, captures


def _trace_step(model, iterator):
    """The runtime function of one step on ``iterator``'s next batch, and the values it
    captures (the variables)."""
    read_and_step = tf.function(lambda iterator: model.train_step(iterator.get_next()),
                                autograph=False)
    concrete = read_and_step.get_concrete_function(iterator)
    return concrete.inference_fn, list(concrete.captured_inputs)


def _return_free_heap_to_the_system() -> None:
    """glibc's ``malloc_trim``: the freed graphs' pages are given back at once.

    Otherwise they stay resident in the C heap, where TensorFlow's large buffers
    (taken from oneDNN's pool, not that heap) would not reuse them. Nothing on a C
    library without it."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass
