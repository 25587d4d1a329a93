"""Errors raised by model loaders."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded. The message names the model and how to give a local path."""
