"""The compiled causal LM users hold: a thin shell over an executor (runtime/executor.py): from_pretrained
(compile or load), save_pretrained, and the raw run API (prefill / decode / generate) as executor calls.

    model = LlamaForCausalLM.from_pretrained("hf-dir", export=True, batch_size=8, decoder_batch_sizes=[8, 4, 1])
    model.save_pretrained("out-dir")
    model = LlamaForCausalLM.from_pretrained("out-dir")   # loads graphs; compiles nothing
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch

from .checkpoints import Checkpoint, open_checkpoint, resolve_model_dir
from .compiled_options import check_options_match
from .compiler.atomic_write import write_directory
from .compiler.manifest import manifest_configs, other_files, read_manifest, verify_manifest, weight_like_files
from .config import CompileConfig, build_compile_config
from .models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from .models.vocabulary import check_token_ids
from .planner.auto import record_plan, resolve_auto_decoder_batch_sizes
from .planner.eager_calibration import eager_cost_table
from .quantization.checkpoint_state import default_quantization
from .runtime.distributed import RankPlacement
from .runtime.executor import Executor
from .runtime.executors import compile_executor, load_executor
from .runtime.kv_cache import KVCache
from .runtime.model_runner import ModelRunner
from .runtime.step import PrefillOutput
from .runtime.weights import tied_as_stored


class BucketModelForCausalLM:
    """A causal LM compiled into one prefill graph and one decoder graph per decoder batch size."""

    model_types: tuple[str, ...] = SUPPORTED_MODEL_TYPES

    def __init__(self, executor: Executor, manifest: dict[str, Any]):
        self.executor = executor
        self.directory: Path = executor.directory
        self.manifest = manifest
        self.compile_config: CompileConfig = executor.compile_config
        self.model_config: ModelConfig = executor.model_config
        self._hf_config = None
        self._generation_config = None

    @property
    def runner(self) -> ModelRunner:
        """This process's own runner (rank 0's shard on rank 0): its graphs, weights and counters."""
        return self.executor.driver

    # ---- construction ----
    @classmethod
    def from_pretrained(cls, model_id: str | os.PathLike | None = None, export: bool = False,
                        gguf_file: str | os.PathLike | None = None, **options: Any):
        """export=True compiles model_id: a Hugging Face checkpoint directory (or a hub id in the local cache), a
        GGUF file, or a directory holding gguf_file. export=False loads a compiled directory."""
        if model_id is None:
            raise TypeError("from_pretrained needs model_id: a checkpoint directory, a cached hub id, a GGUF file, "
                            "or a compiled directory")
        if export:
            return cls._compile(open_checkpoint(model_id, gguf_file), options)
        if gguf_file is not None or Path(model_id).is_file():
            raise ValueError(f"{Path(model_id) / (gguf_file or '')} is a checkpoint to compile, not a compiled "
                             "directory: compile it first (from_pretrained(..., export=True) then save_pretrained, or "
                             "`bucketserve compile MODEL OUT`) and load the compiled directory")
        return cls._load(resolve_model_dir(model_id), options)

    @classmethod
    def _check_model_type(cls, model_type: str) -> None:
        if model_type not in cls.model_types:
            raise ValueError(
                f"the checkpoint is model_type {model_type!r} but {cls.__name__} runs {', '.join(cls.model_types)}; "
                f"use AutoModelForCausalLM"
            )

    @classmethod
    def _compile(cls, checkpoint: Checkpoint, options: dict[str, Any]):
        model_config = ModelConfig.from_hf_dict(checkpoint.hf_config)
        cls._check_model_type(model_config.model_type)
        options, decoder_plan = resolve_auto_decoder_batch_sizes(  # decoder_batch_sizes="auto": a planned list
            options, model_config, lambda config: eager_cost_table(checkpoint, config, model_config))
        compile_config = build_compile_config(options, model_config, default_quantization(checkpoint))
        # Nothing is read (or dequantized, or quantized) until a tensor is used.
        model_config = tied_as_stored(model_config, checkpoint.float_tensors())
        out_dir = Path(tempfile.mkdtemp(prefix="bucketserve-"))
        try:
            executor = compile_executor(checkpoint, out_dir, compile_config, model_config)
            if decoder_plan is not None:
                record_plan(out_dir, decoder_plan)
            instance = cls(executor, read_manifest(out_dir))
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        weakref.finalize(instance, shutil.rmtree, str(out_dir), ignore_errors=True)
        return instance

    @classmethod
    def _load(cls, directory: Path, options: dict[str, Any]):
        # Under torchrun (env://) a rank checks its own files only after joining the group, so that a host missing
        # its shard tells rank 0 so, rather than leaving it to wait for a rank that never joins.
        placement = RankPlacement.from_env()
        manifest = verify_manifest(directory) if placement is None else read_manifest(directory)
        compile_config, model_config = manifest_configs(manifest, directory)
        cls._check_model_type(model_config.model_type)
        check_options_match(options, compile_config, model_config, directory)
        return cls(load_executor(directory, compile_config, model_config, placement), manifest)

    def close(self) -> None:
        """Stop tensor-parallel workers (if any); the model cannot run afterwards. Single-process: no-op.
        On a torchrun rank other than 0, first runs rank 0's calls until rank 0 closes the model too."""
        self.executor.close()

    # ---- tensor-parallel ranks launched by torchrun ----
    @property
    def rank(self) -> int:
        """This process's tensor-parallel rank: torchrun's RANK, else 0 (spawned workers are not user processes)."""
        return self.executor.rank

    def run_on_every_rank(self, call):
        """One call of the user's script that every rank makes (generate, chat): rank 0 runs call() and returns
        its result; under torchrun every other rank runs rank 0's graph calls meanwhile and returns (or raises)
        the same. In a single process (or with spawned workers) it is call()."""
        return self.executor.run_on_every_rank(call)

    def follow(self) -> None:
        """On a torchrun rank other than 0: run rank 0's calls until rank 0 closes the model (how ranks other
        than 0 serve: `bucketserve serve` there calls this). On rank 0 it returns at once."""
        self.executor.follow()

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        target = Path(save_directory)
        if target.resolve() == self.directory.resolve():
            return
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"{target} is a file; save_pretrained writes a directory: give a directory's path")
        if target.resolve().is_relative_to(self.directory.resolve()):
            raise ValueError(f"cannot save into {target}, inside the model's own directory {self.directory}; "
                             "choose a directory outside it")
        # Weights left in the target by another model would be loaded beside or instead of these.
        foreign = sorted(p.name for p in weight_like_files(target) if not (self.directory / p.name).is_file())
        if foreign:
            raise FileExistsError(f"{target} already holds weight files of another model ({', '.join(foreign)}); "
                                  "save to a new or empty directory, or remove them")
        others = other_files(target)
        if others:  # the save replaces the directory as a whole: never a folder of the user's own files
            raise FileExistsError(f"{target} holds files that are no compiled model's ({', '.join(others[:5])}); "
                                  "save to a new or empty directory, or remove them")
        write_directory(target, lambda staging: shutil.copytree(self.directory, staging, dirs_exist_ok=True))

    # ---- what the model is ----
    @property
    def rbln_config(self) -> CompileConfig:
        """The normalized compile options (optimum-rbln's name for them)."""
        return self.compile_config

    @property
    def config(self):
        """The checkpoint's transformers config, as HF models expose it."""
        if self._hf_config is None:
            from transformers import AutoConfig

            self._hf_config = AutoConfig.from_pretrained(self.directory)
        return self._hf_config

    @property
    def generation_config(self):
        """The checkpoint's generation defaults (eos and pad token ids), as HF models expose them."""
        if self._generation_config is None:
            from transformers import GenerationConfig

            self._generation_config = GenerationConfig.from_pretrained(self.directory)
        return self._generation_config

    @property
    def kv_cache(self) -> KVCache:
        return self.runner.kv_cache

    # ---- running: the raw API, each an executor call (the engine calls the executor itself) ----
    def decoder_batch_size_for(self, num_seqs: int) -> int:
        """The smallest compiled decoder batch size >= num_seqs (3 -> 4 with [8, 4, 1])."""
        return self.runner.decoder_batch_size_for(num_seqs)

    def prefill(self, token_ids: list[int], block_table: list[int], start: int = 0, return_hidden: bool = False) -> PrefillOutput:
        """Prefill one sequence into its KV blocks, chunk by chunk; returns the next-token logits."""
        token_ids = list(token_ids)
        check_token_ids(token_ids, self.model_config.vocab_size)
        return self.executor.call("prefill", token_ids, list(block_table), start, return_hidden)

    def prefill_batch(self, token_ids: list[list[int]], block_tables: list[list[int]], starts: list[int],
                      return_hidden: list[bool]) -> list[PrefillOutput]:
        """Prefill several sequences together (one row each, every row from its own start position)."""
        if not len(token_ids) == len(block_tables) == len(starts) == len(return_hidden):
            raise ValueError("prefill_batch takes one token list, block table, start and return_hidden per sequence")
        token_ids = [list(ids) for ids in token_ids]
        for ids in token_ids:
            check_token_ids(ids, self.model_config.vocab_size)
        return self.executor.call("prefill_batch", token_ids, [list(t) for t in block_tables], list(starts),
                                  list(return_hidden))

    def decode(self, input_ids: list[int], positions: list[int], block_tables: list[list[int]]) -> torch.Tensor:
        """One decode step for N sequences on the smallest decoder >= N; returns [N, vocab] logits."""
        if not len(input_ids) == len(positions) == len(block_tables):
            raise ValueError(
                f"decode takes one input id, position and block table per sequence; got "
                f"{len(input_ids)}, {len(positions)} and {len(block_tables)}"
            )
        input_ids = list(input_ids)
        check_token_ids(input_ids, self.model_config.vocab_size)
        return self.executor.call("decode", input_ids, list(positions), [list(t) for t in block_tables])

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.executor.call("compute_logits", hidden)

    def generate(self, input_ids, max_new_tokens: int = 20, attention_mask=None, eos_token_id=None, pad_token_id=None,
                 do_sample: bool = False):
        """HF-style greedy generation for up to batch_size prompts; returns [batch, prompt_len + new] ids.
        do_sample=False is accepted as HF scripts pass it; sampling is the engine's (LLM.generate)."""
        from .greedy import greedy_generate

        if do_sample:
            raise ValueError("model.generate is greedy only; for sampling use LLM(...).generate with SamplingParams")
        return self.run_on_every_rank(
            lambda: greedy_generate(self, input_ids, max_new_tokens, attention_mask, eos_token_id, pad_token_id))


class AutoModelForCausalLM(BucketModelForCausalLM):
    """Any supported model_type (llama, mistral, qwen2, qwen3); the family classes below take only their own."""


class LlamaForCausalLM(BucketModelForCausalLM):
    model_types = ("llama",)


class MistralForCausalLM(BucketModelForCausalLM):
    model_types = ("mistral",)


class Qwen2ForCausalLM(BucketModelForCausalLM):
    model_types = ("qwen2",)


class Qwen3ForCausalLM(BucketModelForCausalLM):
    model_types = ("qwen3",)
