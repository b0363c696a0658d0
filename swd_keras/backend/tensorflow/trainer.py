"""The bilevel search step on TensorFlow (``tf.GradientTape``), after the Keras guide
"Customizing what happens in fit() with TensorFlow". Compiles under XLA.

Both halves of the step (attention update on the validation batch, weight update on
the training batch) run one and the same function, ``forward_backward``, that returns
the gradients of every trainable variable; each half applies its own. Outside XLA the
function is not inlined, so TensorFlow traces, optimises and instantiates the
network's forward and backward graph once instead of twice: the step's first call
is traced in 9 s instead of 12 s and the step peaks 0.3 GB lower. The price is the
weight gradients computed (and dropped) in the attention half, ~10% of a step on a CPU;
where Grappler runs (a GPU), its function specialisation prunes them per call.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import weakref

import tensorflow as tf

_FORWARD_BACKWARD = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def fit_scope(model):
    """Runs ``fit`` without op stack traces and, on a CPU, without TensorFlow's graph
    optimiser (Grappler); both settings are restored when ``fit`` returns.

    On a CPU, Grappler spent ~15 s optimising the search step before its first run,
    half the time to the first step, and its only gain per step there is pruning the
    attention half's weight gradients (~10%; docs/BENCHMARKS.md). On a GPU its layout
    and fusion passes matter, and XLA replaces it.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(_without_op_stack_traces())
        if not (model.jit_compile or tf.config.list_logical_devices("GPU")):
            previous = tf.config.optimizer.get_experimental_options().get(
                "disable_meta_optimizer", False)
            tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
            stack.callback(tf.config.optimizer.set_experimental_options,
                           {"disable_meta_optimizer": previous})
        yield


@contextlib.contextmanager
def _without_op_stack_traces():
    """Traces graph operations without recording the Python stack of each.

    TensorFlow keeps every traced op's Python stack, for the "defined at" lines of
    runtime errors, and copies the stacks as strings into each graph it instantiates:
    0.26 GB of the search step's peak memory and ~2 s before its first step
    (docs/BENCHMARKS.md). The step's ops are this package's; a runtime error still
    names the failing op by its layer path (``cell_0/edge_3/...``). ``tf_stack`` is
    TensorFlow's own module (no public switch exists), so a TensorFlow without it
    simply keeps its stacks.
    """
    from tensorflow.python.util import tf_stack

    extract = getattr(tf_stack, "extract_stack", None)
    if extract is None:
        yield
        return
    # A stack level above any real depth captures no frames.
    tf_stack.extract_stack = lambda stacklevel=1: extract(stacklevel=1 << 20)
    try:
        yield
    finally:
        tf_stack.extract_stack = extract


@contextlib.contextmanager
def _registered_gradients_dropped():
    """Unregisters the gradient functions registered while inside.

    In a graph, ``tf.custom_gradient`` (``normalize_from_output``, and the
    recomputed edge groups of ``rematerialize``) registers each call's gradient
    function under a new name in TensorFlow's global gradient registry, for good. The
    function's closure holds forward tensors, and with them their whole graph: without
    this, every traced step stays in memory however its functions are dropped. Used
    around ``train_step``, which runs in a graph only while traced, so every way of
    tracing the step is covered; once its backward graph is built, the names are
    never looked up again.
    """
    from tensorflow.python.framework import ops as tf_ops

    registry = tf_ops.gradient_registry._registry
    before = set(registry)
    try:
        yield
    finally:
        for name in set(registry) - before:
            del registry[name]


def forward_backward(model):
    """``(x, y) -> (loss, logits, edge_weights, gradients)``, the gradients in
    ``model.trainable_variables`` order; one ``tf.function`` per model, made anew when
    its trainable variables or its ``jit_compile`` change."""
    variables = model.trainable_variables
    key = (tuple(id(v) for v in variables), model.jit_compile)
    if _FORWARD_BACKWARD.get(model, (None,))[0] != key:

        def run(x, y):
            with tf.GradientTape() as tape:
                logits, edge_weights = model(x, training=True)
                loss = model.search_loss(y, logits)
            return loss, logits, edge_weights, tape.gradient(loss, variables)

        # XLA compiles the step as one cluster and inlines the call itself.
        attributes = None if model.jit_compile else {"_noinline": True}
        _FORWARD_BACKWARD[model] = key, tf.function(run, autograph=False,
                                                    experimental_attributes=attributes)
    return _FORWARD_BACKWARD[model][1]


class TrainFunction:
    """``model.train_function`` of ``fit`` on a ``tf.data`` iterator: one bilevel step
    per call of a traced graph whose Python side is let go once it is traced.

    A ``tf.function`` keeps each traced graph for as long as it lives: every traced
    operation and tensor as a Python object and a C++ node, ~38,500 of them for the
    paper's search step. Letting them go took 0.27 GB off its peak, 0.33 GB with
    every cell recomputed, whose backward pass holds a second copy of the forward
    (docs/BENCHMARKS.md, item 16).
    The runtime runs the function definitions it was handed at tracing, so this
    traces the step once per input signature, keeps the runtime function and its
    captured variables, and drops the graphs before the step first runs. A new
    signature (another batch shape) traces again. Python iterators (``train_on_batch``)
    go to Keras' own function.

    Args:
        model: the ``SWDSearchModel``.
        keras_function: Keras' ``train_function``, for inputs that are not a
            ``tf.data.Iterator``.

    Call arguments:
        iterator: the epoch's iterator; one batch is read from it.

    Returns:
        The step's logs (a dict of scalar tensors).
    """

    def __init__(self, model, keras_function):
        self.model, self.keras_function = model, keras_function
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
        _FORWARD_BACKWARD.pop(self.model, None)
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
    step = model.train_step
    if model.jit_compile:  # XLA cannot compile the iterator's read: the step alone
        step = tf.function(step, autograph=False, jit_compile=True)
    read_and_step = tf.function(lambda iterator: step(iterator.get_next()), autograph=False)
    concrete = read_and_step.get_concrete_function(iterator)
    return concrete._inference_function, list(concrete.captured_inputs)


def _return_free_heap_to_the_system() -> None:
    """glibc's ``malloc_trim``: the freed graphs' pages are given back at once.

    Otherwise they stay resident in the C heap, where TensorFlow's large buffers
    (taken from oneDNN's pool, not that heap) would not reuse them. Nothing on a C
    library without it."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def make_train_function(model, keras_function):
    """``TrainFunction`` where it applies (a graph step under the default strategy,
    one step per execution), else Keras' own ``keras_function``."""
    graph_step = not model.run_eagerly and model.steps_per_execution == 1
    default_strategy = (not tf.distribute.has_strategy()
                        and model.distribute_strategy is tf.distribute.get_strategy())
    return TrainFunction(model, keras_function) if graph_step and default_strategy \
        else keras_function


def _update(model, x, y, variables, optimizer):
    """Forward ``x``, step ``optimizer`` on ``variables`` with the batch loss."""
    loss, logits, edge_weights, grads = forward_backward(model)(x, y)
    position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    optimizer.apply([grads[position[id(v)]] for v in variables], variables)
    return loss, logits, edge_weights


def train_step(model, data):
    with _registered_gradients_dropped():
        return _train_step(model, data)


def _train_step(model, data):
    (x_train, y_train), (x_val, y_val) = data
    optimizer = model.optimizer
    if model.mode == "bilevel":
        arch_loss, _, edge_weights = _update(
            model, x_val, y_val, model.attention_variables, optimizer.attention_optimizer)
    else:
        logits, edge_weights = model(x_val, training=True)
        arch_loss = model.search_loss(y_val, logits)
    model.accumulate_edge_weights(edge_weights)
    variables = model.weight_variables if model.mode == "bilevel" else model.trainable_variables
    loss, logits, _ = _update(model, x_train, y_train, variables, optimizer.weights_optimizer)
    return model.record_metrics(loss, y_train, logits, arch_loss)


def test_step(model, data):
    x, y = data[:2]
    logits, _ = model(x, training=False)
    return model.record_metrics(model.search_loss(y, logits), y, logits)
