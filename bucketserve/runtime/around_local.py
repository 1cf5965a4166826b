"""The base of the tensor-parallel runners (TensorParallelRunner on rank 0, FollowerRunner on the others): each
wraps this rank's own ModelRunner, `local`, and hands it whatever it does not define itself (the configs, the
counters, the KV cache, compute_logits), so the engine and the model see one runner API on every rank."""
from __future__ import annotations


class AroundLocalRunner:
    def __getattr__(self, name):
        if name == "local":  # not set yet (a constructor that failed part-way): no recursion
            raise AttributeError(name)
        return getattr(self.local, name)
