"""Parts of a packed weight, re-packed: output rows (a tensor-parallel rank's slice of q/k/v, gate/up) or whole
groups of inputs (its slice of o_proj, down_proj). Values, scales and mins are moved, never requantized, so a
shard dequantizes to exactly the same slice of the full weight. Plain tensor ops: they work on `meta` too."""
from __future__ import annotations

from .layout import GROUP, PackedWeight, _blocked, _unblocked, padded_k


def _map(packed: PackedWeight, pick) -> tuple:
    """pick(tensor as [n, m], bytes_per_group) applied to qweight, scales and mins in their unblocked form."""
    n, _ = packed.shape
    values_per_byte = 2 if packed.bits == 4 else 1
    qweight = _blocked(pick(_unblocked(packed.qweight, n), GROUP // values_per_byte))
    scales = _blocked(pick(_unblocked(packed.scales, n), 1))
    mins = None if packed.mins is None else _blocked(pick(_unblocked(packed.mins, n), 1))
    return qweight, scales, mins


def rows(packed: PackedWeight, start: int, stop: int) -> PackedWeight:
    """Output rows [start, stop): any boundary (rows are re-blocked, those past stop - start zero)."""
    n, k = packed.shape
    if not 0 <= start < stop <= n:
        raise ValueError(f"rows [{start}, {stop}) are not inside a weight of {n} rows")
    qweight, scales, mins = _map(packed, lambda t, _: t[start:stop])
    return PackedWeight(qweight, scales, mins, (stop - start, k))


def columns(packed: PackedWeight, start: int, stop: int) -> PackedWeight:
    """Inputs [start, stop) of every row: whole groups of GROUP (stop may also be k, the last, partial group)."""
    n, k = packed.shape
    if not 0 <= start < stop <= k or start % GROUP or (stop % GROUP and stop != k):
        raise ValueError(f"inputs [{start}, {stop}) of a weight with {k} inputs are not whole groups of {GROUP}; "
                         f"a quantized weight splits by input only at multiples of {GROUP}")
    first, last = start // GROUP, padded_k(stop) // GROUP
    qweight, scales, mins = _map(packed, lambda t, per_group: t[:, first * per_group:last * per_group])
    return PackedWeight(qweight, scales, mins, (n, stop - start))
