"""swd-keras: SWD-NAS (self-adaptive weights from dual attention for differentiable
architecture search) for Keras 3, on the TensorFlow, JAX and PyTorch backends.

Importing the package imports neither Keras nor TensorFlow; each public name loads its
module on first use.
"""

__version__ = "0.1.0"

# Every public name loads its module on first use, so `import swd_keras` (and the command,
# which lives in swd_keras.cli and must choose the Keras backend before Keras loads)
# imports neither Keras nor TensorFlow. A layer is registered for `keras.saving` when its
# module loads: name it, or import its module, before loading a .keras file by hand.
_LAZY = {
    **dict.fromkeys(("BUILTIN_GENOTYPES", "CellGenotype", "Genotype", "GenotypeError",
                     "default_reduction_indices", "derive_genotype", "get_genotype",
                     "load_genotype", "normalize_edge_weights"), "swd_keras.genotype"),
    **dict.fromkeys(("EdgeGroup", "LowerAttention", "SWDMixedOp", "UpperAttention",
                     "select_channels"), "swd_keras.layers"),
    **dict.fromkeys(("OPS", "PARAMETER_FREE", "PRIMITIVES", "FusedKernel", "import_primitives",
                     "make_op", "register_primitive"), "swd_keras.ops"),
    "TorchSGD": "swd_keras.optimizers",
    "SWDSearchModel": "swd_keras.search",
    **dict.fromkeys(("attention_variables", "build_supernet"), "swd_keras.supernet"),
    **dict.fromkeys(("search_data", "train_data", "DatasetUnavailableError", "DATASETS"),
                    "swd_keras.data"),
    "plot_genotype": "swd_keras.plot",
    **dict.fromkeys(("SearchConfig", "run_search"), "swd_keras.search_job"),
    **dict.fromkeys(("build_network", "count_parameters", "inference_model"),
                    "swd_keras.network"),
    "Cell": "swd_keras.cells",
    **dict.fromkeys(("RetrainConfig", "fit_network", "DropPathSchedule"), "swd_keras.training"),
    **dict.fromkeys(("export_model", "export_savedmodel", "verify_export"), "swd_keras.export"),
    **dict.fromkeys(("run_pipeline", "pipeline_config", "PipelineConfig"), "swd_keras.pipeline"),
    **dict.fromkeys(("SearchHyperModel", "RetrainHyperModel", "SWDTuner", "run_ablation"),
                    "swd_keras.tuning"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'swd_keras' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY})


__all__ = [*_LAZY]
