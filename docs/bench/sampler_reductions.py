"""The reductions a sampling step can take over 8 rows of the SmolLM2 vocabulary (49152 logits): torch's argmax
against its max, engine.sampler.first_argmax, and the two ways to get log-probabilities (the full log-softmax,
or one logsumexp per row), best of 200 calls each, 2 threads:

    python docs/bench/sampler_reductions.py
"""
import time

import torch

from bucketserve.engine.sampler import first_argmax

torch.set_num_threads(2)
logits = torch.randn(8, 49152)
reductions = {
    "torch.argmax": lambda: logits.argmax(-1),
    "torch.amax": lambda: logits.amax(-1),
    "first_argmax": lambda: first_argmax(logits),
    "torch.log_softmax": lambda: torch.log_softmax(logits, -1),
    "torch.logsumexp": lambda: torch.logsumexp(logits, -1),
}
for name, reduce in reductions.items():
    reduce()
    best = float("inf")
    for _ in range(200):
        started = time.perf_counter()
        reduce()
        best = min(best, time.perf_counter() - started)
    print(f"{name}: {best * 1e6:.0f} us")
