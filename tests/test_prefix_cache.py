"""Prefix caching and batched prefill through the public API: results identical with caching on and off,
hits counted, eviction under a small cache, no KV block leaked after aborts, and prompts prefilled
together (one graph call, rows) matching prompts prefilled one at a time, compiled and eager."""
from __future__ import annotations

import pytest
import torch

from bucketserve import LLM, AutoModelForCausalLM, SamplingParams

BLOCK = 16  # the default kvcache_block_size
EAGER_COMPILE = dict(batch_size=4, max_seq_len=256, decoder_batch_sizes=[4, 1], prefill_chunk_size=32, compiler="eager")
SYSTEM = list(range(100, 100 + 3 * BLOCK + 5))  # a shared prefix of three full blocks and a partial one


@pytest.fixture(scope="module")
def eager_model_dir(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("prefix-eager")
    AutoModelForCausalLM.from_pretrained(tiny_checkpoint, export=True, **EAGER_COMPILE).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def small_cache_dir(tiny_checkpoint, tmp_path_factory):
    """Room for one full-length sequence and a few blocks more: caching must evict to keep serving."""
    out = tmp_path_factory.mktemp("prefix-small-cache")
    AutoModelForCausalLM.from_pretrained(tiny_checkpoint, export=True, **EAGER_COMPILE,
                                         kvcache_num_blocks=256 // BLOCK + 4).save_pretrained(out)
    return out


def token_prompts() -> list[dict]:
    """Shared-prefix prompts, a partial-block prompt and prompts of exactly one, two and three full blocks."""
    prompts = [SYSTEM + [7 + i, 8 + i, 9 + i] for i in range(3)]  # shared prefix, partial last block
    prompts += [list(range(200, 200 + n * BLOCK)) for n in (1, 2, 3)]  # full blocks (all cached on repeat)
    prompts.append(SYSTEM[: 2 * BLOCK] + list(range(400, 400 + BLOCK)))  # shares two blocks, then a full one
    return [{"prompt_token_ids": p} for p in prompts]


def run_twice(llm: LLM, prompts, params) -> list:
    """Every prompt once (filling the cache), then all again (hitting it); the second round's outputs."""
    for prompt in prompts:
        llm.generate([prompt], params, use_tqdm=False)
    return llm.generate(prompts, params, use_tqdm=False)


def assert_same_outputs(expected, got):
    for a, b in zip(expected, got, strict=True):
        for ca, cb in zip(a.outputs, b.outputs, strict=True):
            assert ca.token_ids == cb.token_ids
            assert ca.cumulative_logprob == pytest.approx(cb.cumulative_logprob, abs=1e-4)
            for pa, pb in zip(ca.logprobs or [], cb.logprobs or [], strict=True):
                assert pa.keys() == pb.keys()
                assert [pa[t].logprob for t in pa] == pytest.approx([pb[t].logprob for t in pb], abs=1e-4)
        assert (a.prompt_logprobs is None) == (b.prompt_logprobs is None)
        if a.prompt_logprobs is not None:
            assert len(a.prompt_logprobs) == len(b.prompt_logprobs) == len(a.prompt_token_ids)
            assert a.prompt_logprobs[0] is None and b.prompt_logprobs[0] is None
            for pa, pb in zip(a.prompt_logprobs[1:], b.prompt_logprobs[1:], strict=True):
                assert pa.keys() == pb.keys()
                assert [pa[t].logprob for t in pa] == pytest.approx([pb[t].logprob for t in pb], abs=1e-4)


def assert_nothing_held(llm: LLM):
    stats = llm.get_stats()
    assert stats["held_blocks"] == 0
    assert stats["free_blocks"] == stats["usable_blocks"]
    assert stats["num_running"] == stats["num_waiting"] == 0


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, logprobs=3),
    SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=2, prompt_logprobs=2),
    SamplingParams(temperature=0.8, top_p=0.9, seed=7, n=2, max_tokens=8, ignore_eos=True),
], ids=["greedy-logprobs", "prompt-logprobs", "seeded-sampling-n2"])
def test_caching_on_and_off_give_the_same_results(eager_model_dir, params):
    prompts = token_prompts()
    results = {}
    for enabled in (False, True):
        llm = LLM(model=str(eager_model_dir), enable_prefix_caching=enabled)
        results[enabled] = run_twice(llm, prompts, params)
        assert_nothing_held(llm)
    assert_same_outputs(results[False], results[True])
    cached = [out.num_cached_tokens for out in results[True]]
    if params.prompt_logprobs is not None:
        assert cached == [0] * len(prompts)  # such requests compute their whole prompt
    else:
        # Whole blocks only, and never the block holding the last prompt token.
        lengths = [len(p["prompt_token_ids"]) for p in prompts]
        assert cached == [(n - 1) // BLOCK * BLOCK for n in lengths]
    assert [out.num_cached_tokens for out in results[False]] == [0] * len(prompts)


def test_hits_and_queries_are_counted_in_tokens(eager_model_dir):
    llm = LLM(model=str(eager_model_dir))
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    first = llm.generate([{"prompt_token_ids": SYSTEM + [1, 2]}], params, use_tqdm=False)[0]
    stats = llm.get_stats()
    assert first.num_cached_tokens == 0
    assert (stats["prefix_cache_queries"], stats["prefix_cache_hits"]) == (len(SYSTEM) + 2, 0)
    # The first prompt's three full blocks are cached; a prompt sharing them (and then differing) hits them.
    second = llm.generate([{"prompt_token_ids": SYSTEM[: 3 * BLOCK] + [9] * 20}], params, use_tqdm=False)[0]
    stats = llm.get_stats()
    assert second.num_cached_tokens == 3 * BLOCK
    assert stats["prefix_cache_queries"] == len(SYSTEM) + 2 + 3 * BLOCK + 20
    assert stats["prefix_cache_hits"] == 3 * BLOCK
    assert stats["cached_blocks"] >= 3
    off = LLM(model=str(eager_model_dir), enable_prefix_caching=False)
    off.generate([{"prompt_token_ids": SYSTEM}] * 2, params, use_tqdm=False)
    assert off.get_stats()["prefix_cache_queries"] == off.get_stats()["cached_blocks"] == 0


def test_a_small_cache_evicts_and_still_gives_the_right_results(eager_model_dir, small_cache_dir):
    # Twelve prompts of 5 to 9 blocks each against 19 usable blocks: only a few fit at once, so cached
    # blocks are evicted (and requests preempted) all along.
    prompts = [{"prompt_token_ids": [(7 * i + j) % 250 + 3 for j in range(BLOCK * (5 + i % 5) + 3)]} for i in range(12)]
    prompts += prompts[:4]  # repeats: hits if their blocks survived, recomputed if evicted
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=1)
    reference = LLM(model=str(eager_model_dir), enable_prefix_caching=False).generate(prompts, params, use_tqdm=False)
    llm = LLM(model=str(small_cache_dir))
    got = llm.generate(prompts, params, use_tqdm=False)
    assert_same_outputs(reference, got)
    stats = llm.get_stats()
    assert stats["cached_blocks"] <= stats["usable_blocks"] == 256 // BLOCK + 3
    assert_nothing_held(llm)
    again = llm.generate(prompts[-1:], params, use_tqdm=False)  # the last prompt's blocks are the newest
    assert again[0].num_cached_tokens > 0
    assert_same_outputs(reference[-1:], again)


def test_aborts_and_finishes_release_every_block(eager_model_dir):
    llm = LLM(model=str(eager_model_dir), max_num_batched_tokens=40)  # prompts take several steps to prefill
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, n=2)
    for i in range(6):
        engine.add_request(f"r{i}", None, SYSTEM + [i] * (10 + 7 * i), params)
    for _ in range(4):
        engine.step()
    assert engine.get_stats()["held_blocks"] > 0
    for request_id in ("r0", "r3", "r5"):  # running, part-way through a prefill, still waiting
        engine.abort_request(request_id)
    while engine.has_unfinished_requests():
        engine.step()
    assert_nothing_held(llm)
    assert llm.get_stats()["prefix_cache_hits"] > 0


def test_a_step_prefills_at_most_its_token_budget(eager_model_dir):
    """A long prompt is prefilled over several steps while a running sequence keeps decoding."""
    llm = LLM(model=str(eager_model_dir), max_num_batched_tokens=24, enable_prefix_caching=False)
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    engine.add_request("short", None, [5, 6, 7], params)
    engine.step()
    engine.add_request("long", None, list(range(10, 110)), params)
    steps_until_long_starts = 0
    while not engine.requests["long"].seqs[0].output_token_ids:
        before = len(engine.requests["short"].seqs[0].output_token_ids)
        engine.step()
        assert len(engine.requests["short"].seqs[0].output_token_ids) == before + 1  # decoded every step
        steps_until_long_starts += 1
    assert steps_until_long_starts == -(-100 // 24)
    finished = {}
    while engine.has_unfinished_requests():
        finished.update((out.request_id, out) for out in engine.step() if out.finished)
    assert engine.get_stats()["held_blocks"] == 0
    # The prompt prefilled over five steps gives what one prefilled in one step gives.
    reference = LLM(model=str(eager_model_dir)).generate([{"prompt_token_ids": list(range(10, 110))}], params, use_tqdm=False)
    assert finished["long"].outputs[0].token_ids == reference[0].outputs[0].token_ids


def batched_prefill_matches_one_at_a_time(model):
    """prefill_batch of rows of different lengths and starts == each row prefilled alone, into other blocks."""
    prompts = [list(range(3, 3 + n)) for n in (5, 90, 17)]
    blocks = model.rbln_config.kvcache_block_size
    tables, next_block = [], 1
    for prompt in prompts * 2:  # a copy for the one-at-a-time run
        needed = -(-len(prompt) // blocks)
        tables.append(list(range(next_block, next_block + needed)))
        next_block += needed
    batched = model.prefill_batch(prompts, tables[:3], [0, 0, 0], [True, False, True])
    for prompt, table, out in zip(prompts, tables[3:], batched, strict=True):
        alone = model.prefill(prompt, table, return_hidden=True)
        torch.testing.assert_close(out.logits, alone.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched[0].hidden, model.prefill(prompts[0], tables[3], return_hidden=True).hidden,
                               atol=1e-4, rtol=1e-4)
    assert batched[1].hidden is None
    # A row that starts mid-sequence reads its first positions from blocks written before (another
    # sequence's, as a cached prefix is): the second prompt's first block, then the rest in a new block.
    shared, own = tables[4][:1], list(range(next_block, next_block + len(tables[4]) - 1))
    rest = model.prefill_batch([prompts[1][blocks:]], [shared + own], [blocks], [False])[0]
    torch.testing.assert_close(rest.logits, batched[1].logits, atol=1e-4, rtol=1e-4)


def test_batched_prefill_matches_one_at_a_time_eager(eager_model_dir):
    batched_prefill_matches_one_at_a_time(AutoModelForCausalLM.from_pretrained(eager_model_dir))


def test_batched_prefill_matches_one_at_a_time_compiled(compiled_dir):
    """The AOTInductor prefill graph with its free rows dimension (the session's shared compiled model)."""
    batched_prefill_matches_one_at_a_time(AutoModelForCausalLM.from_pretrained(compiled_dir))


def test_requests_arriving_together_are_prefilled_in_one_call(eager_model_dir):
    llm = LLM(model=str(eager_model_dir), enable_prefix_caching=False)
    runner = llm.model.runner
    calls = []
    original = runner.prefill_graph
    runner.prefill_graph = lambda *inputs: calls.append(inputs[0].shape) or original(*inputs)
    prompts = [{"prompt_token_ids": list(range(3, 3 + n))} for n in (6, 20, 9, 30)]
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    together = llm.generate(prompts, params, use_tqdm=False)
    assert calls == [torch.Size([4, 32])]  # one call, four rows, the longest prompt rounded up to 16
    runner.prefill_graph = original
    alone = [llm.generate([p], params, use_tqdm=False)[0] for p in prompts]
    assert [o.outputs[0].token_ids for o in together] == [o.outputs[0].token_ids for o in alone]


def test_soak_leaves_no_block_held_and_the_server_answering(eager_model_dir):
    """60 requests through the OpenAI server on loopback: shared and unshared prefixes, streams cancelled
    mid-way, clients that disconnect."""
    from benchmarks.soak import run_soak

    result = run_soak(eager_model_dir, requests=60, concurrency=8, time_limit_s=300)
    outcomes = result["outcomes"]
    assert outcomes["not started (time limit)"] == 0
    assert outcomes["cancelled"] == 10 and outcomes["completed"] >= 40
    assert outcomes.get("disconnected", 0) >= 5  # 64 tokens take longer than the client's 50 ms
    assert outcomes.get("disconnected", 0) + outcomes["completed"] + outcomes["cancelled"] == 60  # no errors
    assert result["no_block_leaked"], result["stats_after"]
    assert result["still_answers"]
    assert result["prefix_cache_hits"] > 0


def test_usage_reports_cached_tokens_and_metrics_count_hits(eager_model_dir):
    import httpx

    from benchmarks.soak import serve_in_thread

    prompt = SYSTEM + [9, 10, 11]
    with serve_in_thread(eager_model_dir) as (base_url, _):
        usages = [httpx.post(base_url + "/v1/completions", json={"prompt": prompt, "max_tokens": 2}, timeout=60).json()["usage"]
                  for _ in range(2)]
        chat = httpx.post(base_url + "/v1/chat/completions", timeout=60,
                          json={"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 2}).json()
        metrics = httpx.get(base_url + "/metrics").text
    assert [u["prompt_tokens_details"]["cached_tokens"] for u in usages] == [0, (len(prompt) - 1) // BLOCK * BLOCK]
    assert chat["usage"]["prompt_tokens_details"]["cached_tokens"] >= 0
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines() if line.startswith("bucketserve_prefix")}
    assert samples["bucketserve_prefix_cache_hits_total"] == (len(prompt) - 1) // BLOCK * BLOCK
    assert samples["bucketserve_prefix_cache_queries_total"] >= 2 * len(prompt)
