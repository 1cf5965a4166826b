"""The engine through the vLLM-style API: bucket choice, continuous batching, invariance, limits."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers

from bucketserve import LLM, AutoModelForCausalLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def hf_greedy(checkpoint, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


@pytest.fixture(scope="module")
def compiled_llm(compiled_dir):
    return LLM(model=str(compiled_dir), device="cpu", max_num_seqs=8, max_model_len=256, block_size=64)


@pytest.fixture(scope="module")
def eager_llm(eager_dir):
    return LLM(model=str(eager_dir))


def prompts(n: int) -> list[str]:
    topics = ["rain", "stars", "bread", "rivers", "music", "glass", "sand", "wind", "ice", "salt"]
    return [f"Tell me about {topics[i % len(topics)]} number {i}." for i in range(n)]


def test_greedy_output_is_batch_invariant_across_decoders(compiled_llm):
    batch = prompts(8)
    alone = compiled_llm.generate(batch[:1], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    among_three = compiled_llm.generate(batch[:3], GREEDY, use_tqdm=False)[0].outputs[0].token_ids  # 4-decoder, 1 padding row
    among_eight = compiled_llm.generate(batch, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    assert len(alone) == GREEDY.max_tokens
    assert alone == among_three == among_eight


def test_engine_matches_hf_greedy(compiled_llm, tiny_checkpoint):
    out = compiled_llm.generate(prompts(3), GREEDY, use_tqdm=False)
    for o in out:
        assert o.outputs[0].token_ids == hf_greedy(tiny_checkpoint, o.prompt_token_ids, GREEDY.max_tokens)


def test_twenty_requests_with_eight_rows_complete_in_order(compiled_llm, tiny_checkpoint):
    batch = prompts(20)
    params = [SamplingParams(temperature=0.0, max_tokens=4 + i % 7, ignore_eos=True) for i in range(20)]
    outputs = compiled_llm.generate(batch, params, use_tqdm=False)
    assert [o.prompt for o in outputs] == batch
    for o, p in zip(outputs, params, strict=True):
        assert o.finished and o.outputs[0].finish_reason == "length"
        assert len(o.outputs[0].token_ids) == p.max_tokens
    for o in outputs[::6]:  # spot-check correctness against HF
        assert o.outputs[0].token_ids == hf_greedy(tiny_checkpoint, o.prompt_token_ids, len(o.outputs[0].token_ids))
    stats = compiled_llm.get_stats()
    assert stats["num_running"] == 0 and stats["free_blocks"] == stats["usable_blocks"]


@pytest.mark.parametrize("decoder_batch_sizes, expected", [
    ([8, 4, 1], {1: 1, 2: 4, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}),
    ([8, 2], {1: 2, 2: 2, 3: 8, 4: 8, 5: 8, 6: 8, 7: 8, 8: 8}),
])
def test_bucket_choice_for_every_running_count(tiny_checkpoint, tmp_path, decoder_batch_sizes, expected):
    AutoModelForCausalLM.from_pretrained(tiny_checkpoint, export=True, compiler="eager", batch_size=8, max_seq_len=128,
                                         decoder_batch_sizes=decoder_batch_sizes).save_pretrained(tmp_path)
    llm = LLM(model=str(tmp_path), max_num_batched_tokens=2048)  # admit all n prompts in one step
    steps = 3
    for n in range(1, 9):
        before = llm.get_stats()
        llm.generate(prompts(n), SamplingParams(temperature=0.0, max_tokens=steps + 1, ignore_eos=True), use_tqdm=False)
        after = llm.get_stats()
        ran = {b: after["decode_steps_per_decoder"][b] - before["decode_steps_per_decoder"][b] for b in decoder_batch_sizes}
        # The first token comes from prefill; each of the other `steps` tokens is one decode step of all n.
        assert ran == {b: (steps if b == expected[n] else 0) for b in decoder_batch_sizes}, n
        assert after["padded_rows"] - before["padded_rows"] == steps * (expected[n] - n)


def test_finished_sequences_drop_to_a_smaller_decoder(eager_llm):
    before = eager_llm.get_stats()["decode_steps_per_decoder"]
    params = [SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)] * 7 + \
             [SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)]
    eager_llm.generate(prompts(8), params, use_tqdm=False)
    after = eager_llm.get_stats()["decode_steps_per_decoder"]
    assert after[8] - before[8] == 2  # all eight together for tokens 2 and 3
    assert after[1] - before[1] == 7  # the long one alone for tokens 4..10


def test_prompt_too_long_fails_clearly_and_disturbs_nothing(eager_llm):
    tokenizer = eager_llm.get_tokenizer()
    too_long = {"prompt_token_ids": [5] * 256}
    with pytest.raises(ValueError, match="max_model_len 256"):
        eager_llm.generate([prompts(1)[0], too_long], GREEDY, use_tqdm=False)
    stats = eager_llm.get_stats()
    assert stats["num_running"] == stats["num_waiting"] == 0
    out = eager_llm.generate(prompts(1), GREEDY, use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == GREEDY.max_tokens
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eager_llm.generate({"prompt_token_ids": [len(tokenizer) + 100]}, GREEDY, use_tqdm=False)


def test_generation_reaching_max_model_len_ends_with_length(eager_llm):
    out = eager_llm.generate({"prompt_token_ids": [7] * 250}, SamplingParams(temperature=0.0, max_tokens=None, ignore_eos=True), use_tqdm=False)[0]
    assert out.outputs[0].finish_reason == "length"
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == 256


def test_small_kv_cache_preempts_and_still_matches(tiny_checkpoint, tmp_path):
    # 5 usable blocks of 64 tokens: not enough for 8 sequences of ~100 tokens, so some are preempted and recomputed.
    AutoModelForCausalLM.from_pretrained(tiny_checkpoint, export=True, compiler="eager", batch_size=8, max_seq_len=256,
                                         kvcache_block_size=64, kvcache_num_blocks=6, decoder_batch_sizes=[8, 4, 1]
                                         ).save_pretrained(tmp_path)
    llm = LLM(model=str(tmp_path))
    params = SamplingParams(temperature=0.0, max_tokens=80, ignore_eos=True)
    outputs = llm.generate(prompts(8), params, use_tqdm=False)
    assert llm.get_stats()["num_preemptions"] > 0
    reference = LLM(model=str(tmp_path)).generate(prompts(1), params, use_tqdm=False)[0]
    assert outputs[0].outputs[0].token_ids == reference.outputs[0].token_ids
    assert all(len(o.outputs[0].token_ids) == 80 for o in outputs)


@pytest.mark.parametrize("option, value, message", [
    ("max_num_seqs", 4, "batch_size=8"),
    ("max_model_len", 512, "max_seq_len=256"),
    ("block_size", 96, "not a multiple of the compiled kvcache_block_size=64"),
    ("max_num_batched_tokens", 0, "must be a positive integer"),
    ("device", "cuda", "compiled device='cpu'"),
    ("device", "tpu", "not supported"),
])
def test_engine_options_must_match_what_was_compiled(eager_dir, option, value, message):
    with pytest.raises(ValueError, match=message):
        LLM(model=str(eager_dir), **{option: value})


def test_unknown_engine_argument_is_an_error(eager_dir):
    with pytest.raises(TypeError, match="no_such_option"):
        LLM(model=str(eager_dir), no_such_option=1)


def test_outputs_carry_vllm_fields_and_metrics(eager_llm):
    out = eager_llm.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True), use_tqdm=False)[0]
    completion = out.outputs[0]
    assert out.request_id and out.prompt == "Hello" and out.finished
    assert out.prompt_token_ids == eager_llm.get_tokenizer().encode("Hello")
    assert completion.index == 0 and completion.finish_reason == "length" and completion.stop_reason is None
    assert completion.cumulative_logprob is not None and completion.cumulative_logprob < 0
    m = out.metrics
    assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finished_time


def test_chat_encodes_the_template_without_adding_a_second_bos(eager_dir, tmp_path):
    """A tokenizer that adds a BOS (as Llama's and Mistral's do) under a chat template that writes it too:
    the prompt starts with one BOS, as in vLLM, which encodes the rendered template without special tokens."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(eager_dir / name, tmp_path / name)
    bos = "<|endoftext|>"
    tokenizer = json.loads((tmp_path / "tokenizer.json").read_text())
    bos_id = next(t["id"] for t in tokenizer["added_tokens"] if t["content"] == bos)
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing", "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(bos_token=bos, chat_template="{{ bos_token }}" + config["chat_template"])
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    llm = LLM(model=str(eager_dir), tokenizer=str(tmp_path))
    conversation = [{"role": "user", "content": "Hi"}]
    out = llm.chat(conversation, SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)[0]
    templated = llm.get_tokenizer().apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert llm.get_tokenizer().encode(templated)[:2] == [bos_id, bos_id]  # what encoding with special tokens gives
    assert out.prompt_token_ids[0] == bos_id and out.prompt_token_ids.count(bos_id) == 1


def test_a_missing_tokenizer_says_so(eager_dir, tmp_path):
    with pytest.raises(ValueError, match="(?s)could not load a tokenizer from .*pass tokenizer=PATH"):
        LLM(model=str(eager_dir), tokenizer=str(tmp_path))


def test_bad_params_fail_before_anything_runs_and_integer_ids_of_any_kind_are_accepted(eager_llm):
    prompt = "Tell me about rain"
    vocab = eager_llm.llm_engine.vocab_size
    bad = [SamplingParams(logprobs=vocab + 1), SamplingParams(prompt_logprobs=vocab + 1),
           SamplingParams(stop_token_ids=[vocab], min_tokens=1)]
    for params in bad:
        with pytest.raises(ValueError, match="vocabulary"):
            eager_llm.generate([prompt, prompt], [GREEDY, params], use_tqdm=False)
    with pytest.raises(ValueError, match="SamplingParams.seed"):
        SamplingParams(seed=2 ** 64)
    stats = eager_llm.get_stats()
    assert stats["num_running"] == stats["num_waiting"] == 0 and not eager_llm.llm_engine.requests
    ids = eager_llm.get_tokenizer().encode(prompt)
    as_numpy = eager_llm.generate({"prompt_token_ids": np.array(ids)}, GREEDY, use_tqdm=False)[0]
    assert as_numpy.prompt_token_ids == ids and all(type(t) is int for t in as_numpy.prompt_token_ids)
    assert as_numpy.outputs[0].token_ids == eager_llm.generate({"prompt_token_ids": ids}, GREEDY, use_tqdm=False)[0].outputs[0].token_ids


def test_chat_applies_the_template(eager_llm):
    conversation = [{"role": "user", "content": "Hi there"}]
    via_chat = eager_llm.chat(conversation, GREEDY, use_tqdm=False)[0]
    templated = eager_llm.get_tokenizer().apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert via_chat.prompt == templated
    assert via_chat.outputs[0].token_ids == eager_llm.generate(templated, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    two = eager_llm.chat([conversation, [{"role": "user", "content": "Bye"}]], GREEDY, use_tqdm=False)
    assert len(two) == 2 and two[0].outputs[0].token_ids == via_chat.outputs[0].token_ids
