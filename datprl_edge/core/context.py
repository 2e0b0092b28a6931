"""The context vector's layout, without torch: entry names and slices (see `models.context` for
what the entries are and `restore.context` for how restore uses them)."""

from __future__ import annotations

DOMAIN_WEIGHTS, TASK_WEIGHTS = "domain_weights", "task_weights"
DOMAIN_QUERY, TASK_QUERY = "domain_query", "task_query"
ROUTING_ENTRIES = (DOMAIN_WEIGHTS, TASK_WEIGHTS)


def layout_slices(layout) -> dict[str, slice]:
    """{entry name: slice of the (B, K) vector} for a layout [(name, size), ...]."""
    out, start = {}, 0
    for name, size in layout:
        out[str(name)] = slice(start, start + int(size))
        start += int(size)
    return out


def layout_size(layout) -> int:
    return sum(int(n) for _, n in layout)
