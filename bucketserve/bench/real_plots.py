"""The real-model mode's plots: tokens/s of bucketserve and llama.cpp at each bits (batch 1 and 8 concurrent
requests, the ratio over each pair), and each decoder's step time against its floor."""
from __future__ import annotations

from pathlib import Path

from .plots import _step_plot, matplotlib_missing, pyplot
from .targets import REAL_BITS

__all__ = ["matplotlib_missing", "write_plots"]


def write_plots(results: dict, out_dir: Path) -> list[Path]:
    plt = pyplot(out_dir)
    return [_versus_plot(results, out_dir / "real_vs_llama_cpp.png", plt),
            _step_plot(results, out_dir / "real_step_time_vs_floor.png", plt)]


def _versus_plot(results: dict, path: Path, plt) -> Path:
    scenarios = (("batch_1", "batch 1"), ("concurrent_8", "8 concurrent"))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(11, 4.5))
    for ax, (scenario, title) in zip(axes, scenarios, strict=True):
        runs = results[scenario]
        labels, ours, theirs = [], [], []
        for quantization, file_type in REAL_BITS.items():
            labels.append(f"{quantization} / {file_type}")
            ours.append(runs.get(f"{quantization} [8, 4, 1]", {}).get("output_tokens_per_second", 0.0))
            theirs.append(runs.get(f"llama.cpp {file_type}", {}).get("output_tokens_per_second", 0.0))
        fp32 = runs.get("fp32 [8, 4, 1]", {}).get("output_tokens_per_second")
        positions = range(len(labels))
        ax.bar([p - 0.2 for p in positions], ours, width=0.4, label="bucketserve [8, 4, 1]")
        ax.bar([p + 0.2 for p in positions], theirs, width=0.4, label="llama.cpp (same file)")
        for p, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            if a and b:
                ax.annotate(f"{a / b:.2f}x", (p - 0.2, a), ha="center", va="bottom", fontsize=9)
        if fp32:
            ax.axhline(fp32, color="gray", linestyle="--", linewidth=1, label="bucketserve fp32")
        ax.set_xticks(list(positions), labels)
        ax.set_ylabel("output tokens / s")
        ax.set_title(f"{title}, {results['options']['new_tokens']} greedy tokens")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
