"""The one timing loop: the step-latency scenario, the profile and the A/B scripts in docs/bench use it."""
import time

import torch


def sorted_seconds(call, repeats: int, warmup: int = 3) -> list[float]:
    """Seconds of `repeats` calls of call(), ascending, after `warmup` untimed ones (compiles, caches)."""
    with torch.inference_mode():
        for _ in range(warmup):
            call()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
    return sorted(times)
