"""The tensorflow backend: its step interface (``trainer``) and kernels."""
