"""The jax backend: its step interface (``trainer``) and kernels."""
