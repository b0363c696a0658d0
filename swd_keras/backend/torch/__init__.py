"""The torch backend: its step interface (``trainer``) and kernels."""
