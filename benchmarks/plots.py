"""PNG plots of one run: step time per decoder against its floor, and output tokens/s per scenario per
system. Needs matplotlib (the `bench` extra); without it the benchmark says so and skips the plots."""
from __future__ import annotations

from pathlib import Path

from .options import GROUP_SIZES
from .systems import FILE_TYPE


def matplotlib_missing() -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        return f"matplotlib is not installed ({err}); pip install -e '.[bench]' for the plots"
    return None


def pyplot(out_dir: Path):
    """matplotlib's pyplot on the Agg backend (files, no display), with out_dir made to hold them."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    return plt


def write_plots(results: dict, out_dir: Path) -> list[Path]:
    plt = pyplot(out_dir)
    return [_step_plot(results, out_dir / "step_time_vs_floor.png", plt),
            _throughput_plot(results, out_dir / "tokens_per_second.png", plt)]


def write_gguf_plots(results: dict, out_dir: Path) -> list[Path]:
    """The GGUF run's: served tokens/s of bucketserve and llama-server per user count at each bits (the ratio over
    each pair), and each decoder's step time against its floor."""
    plt = pyplot(out_dir)
    return [_versus_plot(results, out_dir / "real_vs_llama_cpp.png", plt),
            _step_plot(results, out_dir / "real_step_time_vs_floor.png", plt)]


def _step_plot(results: dict, path: Path, plt) -> Path:
    labels, steps, floors = [], [], []
    for system, decoders in results["step_latency"].items():
        for batch, step in decoders.items():
            labels.append(f"{system}\ndecoder {batch}")
            steps.append(step["median_seconds"] * 1000)
            floors.append(step["floor_seconds"] * 1000)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 4.5))
    positions = range(len(labels))
    ax.bar([p - 0.2 for p in positions], steps, width=0.4, label="measured step (median)")
    ax.bar([p + 0.2 for p in positions], floors, width=0.4, label="floor: bytes / read bandwidth")
    for p, (step, floor) in enumerate(zip(steps, floors, strict=True)):
        ax.annotate(f"{step / floor:.1f}x", (p - 0.2, step), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(positions), labels, fontsize=8)
    ax.set_ylabel("ms per decode step")
    ax.set_title(f"decode step at full context ({results['options']['max_seq_len']} tokens)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _throughput_plot(results: dict, path: Path, plt) -> Path:
    scenarios = [f"group of {s}" for s in GROUP_SIZES] + ["arrivals"]
    systems = [s for s, g in results["groups"].items() if "skipped" not in g]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        values = [results["groups"][system][str(s)]["output_tokens_per_second"] for s in GROUP_SIZES]
        values.append(results.get("arrivals", {}).get(system, {}).get("output_tokens_per_second", 0.0))
        ax.bar([x + (i - (len(systems) - 1) / 2) * width for x in range(len(scenarios))], values, width=width, label=system)
    ax.set_xticks(range(len(scenarios)), scenarios)
    ax.set_ylabel("output tokens / s")
    ax.set_title("output tokens/s per scenario (arrivals: bucketserve only)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _served_rate(served: dict, system: str, users: str) -> float:
    return served.get(system, {}).get(users, {}).get("output_tokens_per_second", 0.0)


def _versus_plot(results: dict, path: Path, plt) -> Path:
    users = [str(u) for u in results["options"]["users"]]
    fig, axes = plt.subplots(1, len(FILE_TYPE), figsize=(11, 4.5), squeeze=False)
    for ax, (quantization, file_type) in zip(axes[0], FILE_TYPE.items(), strict=True):
        served = results.get("served", {}).get(quantization, {})
        ours = [_served_rate(served, "bucketserve serve", u) for u in users]
        theirs = [_served_rate(served, "llama-server", u) for u in users]
        positions = range(len(users))
        ax.bar([p - 0.2 for p in positions], ours, width=0.4, label="bucketserve serve")
        ax.bar([p + 0.2 for p in positions], theirs, width=0.4, label=f"llama-server ({file_type})")
        for p, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            if a and b:
                ax.annotate(f"{a / b:.2f}x", (p - 0.2, a), ha="center", va="bottom", fontsize=9)
        ax.set_xticks(list(positions), [f"{u} users" for u in users])
        ax.set_ylabel("output tokens / s")
        ax.set_title(f"{quantization} / {file_type}, {results['options']['new_tokens']} greedy tokens per request")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
