"""The plot: predicted (and, where measured, measured) decode time per token against the number of decoders."""
from __future__ import annotations

from pathlib import Path


def plot_time_per_token(series: dict[str, dict[int, float]], path: str | Path, title: str) -> Path:
    """series: a line name -> {K: ms per token}. matplotlib is imported here only (plotting is optional)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        ks = sorted(points)
        ax.plot(ks, [points[k] for k in ks], marker="o", label=name)
    ax.set_xlabel("decoders compiled (K)")
    ax.set_ylabel("decode time per generated token (ms)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_series(report) -> dict[str, dict[int, float]]:
    """A PlanReport's best-K rows as one line (ms per token against K)."""
    return {"planned": {int(r.name.removeprefix("best K=")): 1000 * r.seconds_per_token
                        for r in report.rows if r.name.startswith("best K=")}}
