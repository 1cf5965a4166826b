"""SamplingParams semantics, checked against references computed here from HF transformers logits."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers

from bucketserve import LLM, AutoModelForCausalLM, SamplingParams
from bucketserve.engine.detokenizer import Detokenizer, special_token_ids
from bucketserve.engine.sampler import first_argmax

PROMPT = "Describe the process of photosynthesis."


@pytest.fixture(scope="module")
def llm(eager_dir):
    return LLM(model=str(eager_dir))


@pytest.fixture(scope="module")
def hf_model(tiny_checkpoint):
    return transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()


def hf_next_logits(hf_model, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([token_ids])).logits[0, -1].float()


def greedy(llm, max_tokens=24, **kw):
    return llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw), use_tqdm=False)[0]


@pytest.mark.parametrize("field, value", [
    ("n", 0), ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -2), ("min_p", 1.5),
    ("max_tokens", 0), ("min_tokens", -1), ("repetition_penalty", 0.0), ("presence_penalty", 2.5),
    ("frequency_penalty", -3.0), ("logprobs", -2), ("prompt_logprobs", -5), ("stop", [""]),
    ("stop_token_ids", [-1]), ("seed", "abc"), ("temperature", float("nan")),
    ("logit_bias", {-1: 1.0}), ("logit_bias", {5: float("inf")}), ("logit_bias", [5]),
])
def test_out_of_range_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
        SamplingParams(**{field: value})


def test_min_tokens_above_max_tokens_is_an_error():
    with pytest.raises(ValueError, match="min_tokens 5 must be <= max_tokens 3"):
        SamplingParams(min_tokens=5, max_tokens=3)


def test_defaults_follow_vllm():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p, p.max_tokens, p.min_tokens) == (1, 1.0, 1.0, 0, 0.0, 16, 0)
    assert p.skip_special_tokens and not p.ignore_eos and p.logprobs is None


def test_seeded_sampling_is_reproducible_whatever_is_batched(llm):
    params = SamplingParams(temperature=1.0, seed=1234, max_tokens=16, ignore_eos=True)
    alone = llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0].token_ids
    others = [SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)] * 5
    batched = llm.generate(["a", "b", PROMPT, "c", "d", "e"], others[:2] + [params] + others[2:], use_tqdm=False)
    assert batched[2].outputs[0].token_ids == alone
    other_seed = llm.generate(PROMPT, SamplingParams(temperature=1.0, seed=99, max_tokens=16, ignore_eos=True), use_tqdm=False)
    assert other_seed[0].outputs[0].token_ids != alone


def test_top_k_1_tiny_top_p_and_min_p_1_equal_greedy(llm):
    reference = greedy(llm, 12).outputs[0].token_ids
    for kw in (dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)):
        out = llm.generate(PROMPT, SamplingParams(temperature=1.0, seed=3, max_tokens=12, ignore_eos=True, **kw), use_tqdm=False)
        assert out[0].outputs[0].token_ids == reference, kw


def test_stop_string_cuts_the_text(llm):
    full = greedy(llm, 32).outputs[0].text
    stop = full[10:13]
    assert len(stop) == 3 and stop.strip()
    first = full.find(stop)
    out = greedy(llm, 32, stop=[stop]).outputs[0]
    assert out.text == full[:first]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    kept = greedy(llm, 32, stop=stop, include_stop_str_in_output=True).outputs[0]
    assert kept.text == full[:first + len(stop)]


def test_a_stop_set_after_construction_counts(llm):
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    text = llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0].text
    params.stop = text[3:6]
    cut = llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == text[3:6] and text.startswith(cut.text)


def test_stop_token_ids_and_max_tokens(llm):
    tokens = greedy(llm, 20).outputs[0].token_ids
    stop_token = tokens[5]
    first = tokens.index(stop_token)
    out = greedy(llm, 20, stop_token_ids=[stop_token]).outputs[0]
    assert out.token_ids == tokens[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_token
    assert greedy(llm, 7).outputs[0].finish_reason == "length" and len(greedy(llm, 7).outputs[0].token_ids) == 7


def test_min_tokens_holds_back_stop_tokens(llm):
    tokens = greedy(llm, 20).outputs[0].token_ids
    stop_token = tokens[1]
    out = greedy(llm, 20, stop_token_ids=[stop_token], min_tokens=6).outputs[0]
    assert len(out.token_ids) >= 6
    assert stop_token not in out.token_ids[:5]
    if out.finish_reason == "stop":
        assert out.token_ids[-1] == stop_token


def test_eos_stops_unless_ignored(tiny_checkpoint, llm, tmp_path):
    tokens = greedy(llm, 20).outputs[0].token_ids
    eos = tokens[4]
    first = tokens.index(eos)
    # Same weights, but a checkpoint whose eos is a token this prompt reaches.
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((ckpt / name).read_text())
        config["eos_token_id"] = eos
        (ckpt / name).write_text(json.dumps(config))
    AutoModelForCausalLM.from_pretrained(ckpt, export=True, compiler="eager", batch_size=2, max_seq_len=128).save_pretrained(tmp_path / "c")
    eos_llm = LLM(model=str(tmp_path / "c"))
    stopped = eos_llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=20), use_tqdm=False)[0].outputs[0]
    assert stopped.token_ids == tokens[: first + 1]
    assert stopped.finish_reason == "stop" and stopped.stop_reason is None
    ignored = eos_llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True), use_tqdm=False)[0]
    assert ignored.outputs[0].token_ids == tokens


def test_n_completions(llm):
    out = llm.generate(PROMPT, SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=10, ignore_eos=True), use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    same = llm.generate(PROMPT, SamplingParams(n=2, temperature=0.0, max_tokens=10, ignore_eos=True), use_tqdm=False)[0]
    assert same.outputs[0].token_ids == same.outputs[1].token_ids


def test_penalties_match_a_reference_from_hf_logits(llm, hf_model):
    rep, presence, frequency = 1.3, 0.5, 0.4
    out = greedy(llm, 16, repetition_penalty=rep, presence_penalty=presence, frequency_penalty=frequency)
    prompt_ids = out.prompt_token_ids
    generated: list[int] = []
    for _ in range(16):
        logits = hf_next_logits(hf_model, prompt_ids + generated)
        for token in set(prompt_ids + generated):
            logits[token] = logits[token] / rep if logits[token] > 0 else logits[token] * rep
        for token in set(generated):
            logits[token] -= frequency * generated.count(token) + presence
        generated.append(int(logits.argmax()))
    assert out.outputs[0].token_ids == generated
    assert generated != greedy(llm, 16).outputs[0].token_ids  # the penalties changed something


def test_logit_bias_matches_a_reference_from_hf_logits_and_leaves_logprobs_raw(llm, hf_model):
    plain = greedy(llm, 8, logprobs=0)
    banned, forced = plain.outputs[0].token_ids[0], 7
    bias = {banned: -100.0, forced: 3.0}
    out = greedy(llm, 8, logit_bias=bias, logprobs=0)
    prompt_ids = out.prompt_token_ids
    generated: list[int] = []
    for _ in range(8):
        logits = hf_next_logits(hf_model, prompt_ids + generated)
        raw_logprobs = torch.log_softmax(logits, dim=-1)
        for token, value in bias.items():
            logits[token] += value
        generated.append(int(logits.argmax()))
        # vLLM reports the raw model's log-probabilities, before any bias.
        assert out.outputs[0].logprobs[len(generated) - 1][generated[-1]].logprob == pytest.approx(
            float(raw_logprobs[generated[-1]]), abs=1e-4)
    assert out.outputs[0].token_ids == generated and banned not in generated
    with pytest.raises(ValueError, match="logit_bias token ids \\[100000\\] are outside the vocabulary"):
        greedy(llm, 2, logit_bias={100000: 1.0})


def test_logprobs_match_hf(llm, hf_model):
    out = greedy(llm, 8, logprobs=3).outputs[0]
    prompt_ids = llm.get_tokenizer().encode(PROMPT)
    total = 0.0
    for i, (token, entries) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
        reference = torch.log_softmax(hf_next_logits(hf_model, prompt_ids + out.token_ids[:i]), -1)
        top = reference.topk(3)
        assert set(entries) == set(top.indices.tolist()) | {token}
        for token_id, lp in entries.items():
            assert lp.logprob == pytest.approx(float(reference[token_id]), abs=1e-4)
            assert lp.rank == int((reference > reference[token_id]).sum()) + 1
            assert lp.decoded_token == llm.get_tokenizer().decode([token_id])
        total += float(reference[token])
    assert out.cumulative_logprob == pytest.approx(total, abs=1e-3)


def test_prompt_logprobs_match_hf(llm, hf_model):
    out = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=2), use_tqdm=False)[0]
    ids = out.prompt_token_ids
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    with torch.no_grad():
        reference = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), -1)
    for i in range(1, len(ids)):
        entries = out.prompt_logprobs[i]
        assert ids[i] in entries
        assert entries[ids[i]].logprob == pytest.approx(float(reference[i - 1, ids[i]]), abs=1e-4)
        assert set(reference[i - 1].topk(2).indices.tolist()) <= set(entries)


@pytest.mark.parametrize("vocab", [49152, 151936, 32000, 50257, 1000, 64])
def test_first_argmax_is_torch_argmax_ties_and_nan_included(vocab):
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(vocab))
    logits[1, [3, vocab // 2, vocab - 1]] = 100.0  # ties across blocks: the first wins
    logits[2, [vocab - 2, vocab - 1]] = 100.0  # ties within the last block
    logits[3, [5, vocab - 3]] = float("nan")  # torch's argmax takes the first NaN
    logits[4] = float("-inf")
    logits[5, 0] = 100.0
    assert first_argmax(logits).tolist() == logits.argmax(dim=-1).tolist()


def test_streamed_text_equals_decoding_the_tokens(llm):
    tokenizer = llm.get_tokenizer()
    outs = llm.generate([PROMPT, "日本語のテキスト", "ünïcödé ✓"], SamplingParams(temperature=1.0, seed=5, max_tokens=40, ignore_eos=True), use_tqdm=False)
    for out in outs:
        c = out.outputs[0]
        assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)


def test_detokenizer_reassembles_multibyte_characters(llm):
    tokenizer = llm.get_tokenizer()
    text = "héllo wörld — 日本語 ✓ 🙂"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text.split())  # some characters span several byte-level tokens
    detok = Detokenizer(tokenizer, special_token_ids(tokenizer), [], True, [], False)
    pieces = []
    for token in ids:
        before = detok.text
        detok.add_token(token, check_stop=False)
        pieces.append(detok.text[len(before):])
        assert "\ufffd" not in detok.text
    assert "".join(pieces) == text


def test_extreme_but_valid_values_sample_and_a_failed_call_leaves_nothing_running(llm, monkeypatch):
    for kw in (dict(top_p=1e-300, min_tokens=3), dict(temperature=1e300, min_tokens=3), dict(temperature=1e-4, top_k=5)):
        out = llm.generate(PROMPT, SamplingParams(max_tokens=5, seed=1, **kw), use_tqdm=False)[0]
        assert len(out.outputs[0].token_ids) == 5, kw
    engine = llm.llm_engine

    def broken_sampler(logits, seqs):
        raise RuntimeError("sampler failed")

    monkeypatch.setattr(engine, "sampler", broken_sampler)
    with pytest.raises(RuntimeError, match="sampler failed"):
        llm.generate([PROMPT, "two"], SamplingParams(max_tokens=5), use_tqdm=False)
    monkeypatch.undo()
    stats = llm.get_stats()
    assert stats["num_running"] == stats["num_waiting"] == 0 and stats["free_blocks"] == stats["usable_blocks"]
    assert len(llm.generate(PROMPT, SamplingParams(max_tokens=3), use_tqdm=False)[0].outputs[0].token_ids) == 3
