"""bucketserve: compile a causal LM into one prefill graph and several decoder graphs of different batch
sizes, and serve it by running every decode step on the smallest compiled decoder that fits."""
from .engine.outputs import CompletionOutput, RequestOutput
from .engine.sampling_params import SamplingParams
from .entrypoints.llm import LLM
from .modeling import (
    AutoModelForCausalLM,
    BucketModelForCausalLM,
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)
from .version import __version__ as __version__

__all__ = [
    "LLM",
    "SamplingParams",
    "RequestOutput",
    "CompletionOutput",
    "AutoModelForCausalLM",
    "BucketModelForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
]
