"""swd-keras: SWD-NAS (self-adaptive weights from dual attention for differentiable
architecture search) for Keras 3, on the TensorFlow, JAX and PyTorch backends.

Importing the package does not import TensorFlow; the dataset, retraining and export
helpers that need it are loaded on first use.
"""

from swd_keras.genotype import (
    BUILTIN_GENOTYPES,
    CellGenotype,
    Genotype,
    GenotypeError,
    default_reduction_indices,
    derive_genotype,
    get_genotype,
    load_genotype,
    normalize_edge_weights,
)
from swd_keras.layers import (
    EdgeGroup,
    LowerAttention,
    SWDMixedOp,
    UpperAttention,
    select_channels,
)
from swd_keras.ops import (
    OPS,
    PARAMETER_FREE,
    PRIMITIVES,
    FusedKernel,
    import_primitives,
    make_op,
    register_primitive,
)
from swd_keras.optimizers import TorchSGD
from swd_keras.search import SWDSearchModel
from swd_keras.supernet import attention_variables, build_supernet

__version__ = "0.1.0"

# Loaded on first use: these import TensorFlow (tf.data, SavedModel) or matplotlib.
_LAZY = {
    **dict.fromkeys(("search_data", "train_data", "DatasetUnavailableError", "DATASETS"),
                    "swd_keras.data"),
    "plot_genotype": "swd_keras.plot",
    **dict.fromkeys(("SearchConfig", "run_search"), "swd_keras.search_job"),
    **dict.fromkeys(("build_network", "count_parameters", "inference_model"),
                    "swd_keras.network"),
    "Cell": "swd_keras.cells",
    **dict.fromkeys(("RetrainConfig", "fit_network", "DropPathSchedule"), "swd_keras.training"),
    **dict.fromkeys(("export_savedmodel", "verify_export"), "swd_keras.export"),
    **dict.fromkeys(("run_pipeline", "pipeline_config", "PipelineConfig"), "swd_keras.pipeline"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'swd_keras' has no attribute {name!r}")


__all__ = [
    "BUILTIN_GENOTYPES", "CellGenotype", "EdgeGroup", "FusedKernel", "Genotype",
    "GenotypeError", "LowerAttention", "import_primitives", "register_primitive",
    "OPS", "PARAMETER_FREE", "PRIMITIVES", "SWDMixedOp", "SWDSearchModel", "TorchSGD",
    "UpperAttention", "attention_variables", "build_supernet", "default_reduction_indices",
    "derive_genotype", "get_genotype", "load_genotype", "make_op", "normalize_edge_weights",
    "select_channels", *_LAZY,
]
