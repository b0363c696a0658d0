"""One bilevel ``train_step`` / ``test_step`` module per Keras backend.

Each module has ``train_step(model, ...)`` and ``test_step(model, ...)`` with the
signature its backend's trainer calls (``(data)`` on TensorFlow and PyTorch,
``(state, data)`` on JAX); ``SWDSearchModel`` picks the module of the running backend.
"""
