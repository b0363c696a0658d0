"""Sub-commands of ``swd-keras``; importing a module registers its commands on ``cli``.

Command modules import keras and swd_keras only inside their functions, so that
``--backend`` can set ``KERAS_BACKEND`` before Keras is first imported.
"""
from swd_keras.cli.commands import ablate, export, run, search, show, train, tune  # noqa: F401
