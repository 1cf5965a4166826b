"""The one error every rank of a broken tensor-parallel model raises."""


class TensorParallelError(RuntimeError):
    """A tensor-parallel rank failed (it died, its host vanished, a collective timed out) or the model was closed;
    this model can no longer run. Make a new one."""
