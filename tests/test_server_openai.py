"""The OpenAI-compatible server, live on a loopback port, over the AOTInductor-compiled tiny model:
the official openai client in strict mode, continuous batching across connections, disconnects,
errors, metrics, the tokenizer endpoints and a short schemathesis fuzz run."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import socket
import subprocess
import threading
import time

import httpx
import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from bucketserve.engine.sampling_params import SamplingParams
from bucketserve.entrypoints.llm import LLM
from bucketserve.entrypoints.openai.server import build_app, load_server_context

MODEL_NAME = "tiny"


class ErrorRecorder(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))


class LiveServer:
    """build_app(...) served by uvicorn in a background thread on a free loopback port; every ERROR the
    server logs (a traceback in a handler, a failed engine step) is kept in .errors.messages."""

    def __init__(self, model_dir, **options):
        self.errors = ErrorRecorder()
        for name in ("uvicorn.error", "bucketserve"):
            logging.getLogger(name).addHandler(self.errors)
        self.ctx = load_server_context(model_dir, served_model_name=MODEL_NAME, **options)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(build_app(self.ctx), log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def client(self, strict: bool = True) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key="unused", _strict_response_validation=strict, max_retries=0)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics by name, with labels folded in: name{label="v"} -> value."""
        text = httpx.get(self.base_url + "/metrics").text
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def wait_until_idle(self, timeout_s: float = 10.0) -> dict[str, float]:
        deadline = time.monotonic() + timeout_s
        while True:
            metrics = self.metrics()
            idle = (metrics["bucketserve_num_requests_running"] == 0 and metrics["bucketserve_num_requests_waiting"] == 0
                    and metrics["bucketserve_kv_cache_free_blocks"] == metrics["bucketserve_kv_cache_usable_blocks"])
            if idle or time.monotonic() > deadline:
                return metrics
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        for name in ("uvicorn.error", "bucketserve"):
            logging.getLogger(name).removeHandler(self.errors)


def decode_steps(metrics: dict[str, float]) -> dict[int, float]:
    prefix = 'bucketserve_decode_steps_total{decoder_batch_size="'
    return {int(name[len(prefix):-2]): value for name, value in metrics.items() if name.startswith(prefix)}


@pytest.fixture(scope="module")
def server(compiled_dir):
    live = LiveServer(compiled_dir)
    # The first call into each AOTInductor graph is slow; pay it here, not inside a timed test.
    live.client().completions.create(model=MODEL_NAME, prompt=["warm", "up", "the", "graphs", "now"], max_tokens=4)
    yield live
    live.stop()
    assert not live.ctx.engine.is_running


@pytest.fixture(autouse=True)
def no_server_errors(request):
    """Whatever a test sends, the server must not log an error (a 500, a failed step, a traceback)."""
    yield
    if "server" in request.fixturenames:
        live = request.getfixturevalue("server")
        errors, live.errors.messages = live.errors.messages, []
        assert not errors, "the server logged errors:\n" + "\n".join(errors)


@pytest.fixture(scope="module")
def offline_llm(compiled_dir):
    return LLM(model=str(compiled_dir))


def test_openai_client_strict_models_chat_and_completions(server):
    client = server.client(strict=True)
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]

    messages = [{"role": "user", "content": [{"type": "text", "text": "Say something"}]}]
    chat = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_completion_tokens=6, n=2,
                                          logprobs=True, top_logprobs=3, seed=7)
    assert [c.index for c in chat.choices] == [0, 1]
    assert chat.usage.completion_tokens == sum(len(c.logprobs.content) for c in chat.choices)
    assert all(len(t.top_logprobs) == 3 for c in chat.choices for t in c.logprobs.content)

    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6, stream=True,
                                                 temperature=0, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert [c.choices[0].finish_reason for c in chunks[:-1] if c.choices[0].finish_reason] in (["length"], ["stop"])
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    whole = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6, temperature=0)
    assert streamed == whole.choices[0].message.content

    completion = client.completions.create(model=MODEL_NAME, prompt=["One", "Two"], max_tokens=5, n=2, temperature=0,
                                           logprobs=2)
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert completion.choices[0].text == completion.choices[1].text  # greedy: both choices of a prompt agree
    assert completion.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in completion.choices)


def test_completion_stream_usage_chunk_and_continuous_usage(server):
    # Streamed completions chunks carry finish_reason null until the end, as OpenAI sends them, which the
    # client's strict models reject; the payloads are checked by hand here instead.
    body = {"model": MODEL_NAME, "prompt": "Count", "max_tokens": 7, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    with httpx.stream("POST", server.base_url + "/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7
    usage_so_far = [c["usage"]["completion_tokens"] for c in chunks[:-1]]
    assert usage_so_far == sorted(usage_so_far) and usage_so_far[-1] == 7
    whole = server.client().completions.create(model=MODEL_NAME, prompt="Count", max_tokens=7, temperature=0,
                                               extra_body={"ignore_eos": True})
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == whole.choices[0].text


def test_sixteen_concurrent_streams_match_offline_greedy(server, offline_llm):
    prompts = [f"Request {i}: the weather in city {i * 7} is" for i in range(16)]
    max_tokens = [3 + 3 * i for i in range(16)]  # finishing at different steps shrinks the batch past 8, 4 and 1
    before = decode_steps(server.metrics())

    async def one(client, prompt, limit):
        stream = await client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=limit, temperature=0,
                                                 stream=True)
        return "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])

    async def all_clients():
        async with openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0) as client:
            return await asyncio.gather(*(one(client, p, m) for p, m in zip(prompts, max_tokens, strict=True)))

    served = asyncio.run(all_clients())
    offline = offline_llm.generate(prompts, [SamplingParams(temperature=0, max_tokens=m) for m in max_tokens], use_tqdm=False)
    assert served == [out.outputs[0].text for out in offline]
    after = decode_steps(server.wait_until_idle())
    used = [batch for batch in after if after[batch] > before.get(batch, 0)]
    assert len(used) >= 2, f"decode steps per decoder before {before}, after {after}"


def test_echo_logprobs_score_every_prompt_token(server, offline_llm):
    prompt_ids = offline_llm.get_tokenizer().encode("The quick brown fox jumps")
    reference = offline_llm.generate({"prompt_token_ids": prompt_ids}, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1),
                                     use_tqdm=False)[0]
    expected = [None] + [reference.prompt_logprobs[i][t].logprob for i, t in enumerate(prompt_ids) if i > 0]
    # What lm-evaluation-harness's local-completions sends for loglikelihood (token ids, echo, 1 token).
    for max_tokens, generated in ((1, 1), (0, 0)):
        body = {"model": MODEL_NAME, "prompt": [prompt_ids, prompt_ids[:3]], "max_tokens": max_tokens, "echo": True,
                "logprobs": 1, "temperature": 0}
        response = httpx.post(server.base_url + "/v1/completions", json=body, timeout=30)
        assert response.status_code == 200, response.text
        first = response.json()["choices"][0]
        logprobs = first["logprobs"]["token_logprobs"]
        assert len(logprobs) == len(prompt_ids) + generated
        assert logprobs[0] is None and first["logprobs"]["top_logprobs"][0] is None
        assert logprobs[1:len(prompt_ids)] == pytest.approx(expected[1:], abs=1e-4)
        assert response.json()["choices"][1]["logprobs"]["token_logprobs"][0] is None
        assert response.json()["usage"]["completion_tokens"] == 2 * generated
    server.wait_until_idle()


def test_disconnect_mid_stream_aborts_and_frees_blocks(server):
    before = server.metrics()["bucketserve_generation_tokens_total"]
    body = {"model": MODEL_NAME, "prompt": "Go on forever", "max_tokens": 240, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.base_url + "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert sum(line.startswith("data: ") for line in received) >= 3
        assert server.metrics()["bucketserve_num_requests_running"] == 1
    # Leaving the block closed the connection.
    metrics = server.wait_until_idle()
    assert metrics["bucketserve_num_requests_running"] == 0
    assert metrics["bucketserve_kv_cache_free_blocks"] == metrics["bucketserve_kv_cache_usable_blocks"]
    assert metrics["bucketserve_generation_tokens_total"] - before < 240  # aborted, not run to the end


def test_disconnect_while_waiting_for_a_whole_response_aborts(server):
    before = server.metrics()["bucketserve_generation_tokens_total"]
    body = json.dumps({"model": MODEL_NAME, "prompt": "Go on forever", "max_tokens": 240, "n": 8, "ignore_eos": True}).encode()
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as client:
        client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 10
        while server.metrics()["bucketserve_num_requests_running"] < 8:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.01)
    # The socket is closed with the response still being computed.
    metrics = server.wait_until_idle()
    assert metrics["bucketserve_num_requests_running"] == 0
    assert metrics["bucketserve_kv_cache_free_blocks"] == metrics["bucketserve_kv_cache_usable_blocks"]
    assert metrics["bucketserve_generation_tokens_total"] - before < 8 * 240


# Malformed messages and prompts: test_server_messages.py.
BAD_REQUESTS = [
    ("/v1/completions", {"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "n": 1000}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "model": "no-such-model"}, 400, "model"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 400}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x " * 300, "max_tokens": 1}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "stop": ""}, 400, None),
    ("/v1/completions", {"prompt": "x", "min_tokens": 5, "max_tokens": 2}, 400, None),
    ("/v1/completions", {"prompt": "x", "stop_token_ids": [100000]}, 400, "stop_token_ids"),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/completions", [1, 2], 400, None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400, "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 10 ** 9}, 400, None),
    ("/detokenize", {"tokens": [10 ** 6]}, 400, "tokens"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"99999": 5}}, 400, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"a token": 5}}, 400, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"5": 101}}, 400, "logit_bias.5"),
    ("/v1/completions", {"prompt": "x", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}, 400, "tool_choice"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "response_format": {"type": "json_object"}}, 400, "response_format"),
]


@pytest.mark.parametrize("path, body, status, param", BAD_REQUESTS)
def test_bad_input_gets_an_openai_error(server, path, body, status, param):
    response = httpx.post(server.base_url + path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param


def test_malformed_bodies_and_unknown_routes(server):
    url = server.base_url + "/v1/completions"
    for content in (b"{not json", b"", b"\xff\xfe", b"null", b'"a string"'):
        response = httpx.post(url, content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400 and "error" in response.json(), (content, response.text)
    missing = httpx.get(server.base_url + "/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert httpx.get(url).status_code == 405
    # The server is still healthy and serving.
    assert httpx.get(server.base_url + "/health").status_code == 200
    assert server.client().completions.create(model=MODEL_NAME, prompt="ok", max_tokens=2).choices[0].finish_reason


def test_logit_bias_steers_tokens_as_offline_and_text_offsets_stream_as_whole(server, offline_llm):
    prompt = "The weather today"
    plain = offline_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6), use_tqdm=False)[0].outputs[0]
    bias = {plain.token_ids[0]: -100.0}
    offline = offline_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6, logit_bias=bias), use_tqdm=False)[0]
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 1, "echo": True,
            "logit_bias": {str(token): value for token, value in bias.items()}}
    whole = httpx.post(server.base_url + "/v1/completions", json=body).json()["choices"][0]
    assert whole["text"] == prompt + offline.outputs[0].text and offline.outputs[0].token_ids[0] != plain.token_ids[0]
    with httpx.stream("POST", server.base_url + "/v1/completions", json={**body, "stream": True}) as response:
        chunks = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line and line != "data: [DONE]"]
    streamed = [c["choices"][0]["logprobs"] for c in chunks]
    assert len(streamed) > 1
    # Offsets count from the start of the choice's text in every chunk, as in the whole response.
    assert [offset for part in streamed for offset in part["text_offset"]] == whole["logprobs"]["text_offset"]
    assert [token for part in streamed for token in part["tokens"]] == whole["logprobs"]["tokens"]


def test_model_card_version_and_cors(server):
    card = server.client().models.retrieve(MODEL_NAME)
    assert card.id == MODEL_NAME
    missing = httpx.get(server.base_url + "/v1/models/other")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    from bucketserve import __version__
    assert httpx.get(server.base_url + "/version").json() == {"version": __version__}
    preflight = httpx.options(server.base_url + "/v1/chat/completions", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] in ("*", "http://localhost:3000")
    models = httpx.get(server.base_url + "/v1/models", headers={"Origin": "http://localhost:3000"})
    assert models.headers["access-control-allow-origin"] == "*"


class RecordingTokenizer:
    """The server's prompt tokenizer, recording how many characters each call was given."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def encode(self, text, *args, **kwargs):
        self.lengths.append(len(text))
        return self.tokenizer.encode(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "many words in a very long prompt " * 30000, "max_tokens": 1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "many words in a long chat " * 30000}]}),
    ("/tokenize", {"prompt": "many words in a very long prompt " * 30000}),
])
def test_text_that_cannot_fit_the_context_is_refused_before_it_is_tokenized(server, monkeypatch, path, body):
    """About a million characters, far over what 256 tokens can hold: a 400 without tokenizing it (it would hold
    the prompt thread, and every other request's prompt behind it, for seconds)."""
    recording = RecordingTokenizer(server.ctx.prompt_tokenizer)
    monkeypatch.setattr(server.ctx, "prompt_tokenizer", recording)
    response = httpx.post(server.base_url + path, json={"model": MODEL_NAME, **body}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded", response.text
    assert "characters" in response.json()["error"]["message"] and recording.lengths == []
    # A prompt that fits is tokenized as before.
    fits = {"prompt": "a short prompt"} if "messages" not in body else {"messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(server.base_url + path, json={"model": MODEL_NAME, **fits, "max_tokens": 2}).status_code == 200
    assert recording.lengths


def test_a_body_over_max_request_bytes_gets_413_unread(server):
    limit = 4 << 20  # the server's default --max-request-bytes
    big = {"model": MODEL_NAME, "prompt": "x" * (limit + 10), "max_tokens": 1}
    response = httpx.post(server.base_url + "/v1/completions", json=big, timeout=60)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and str(limit) in error["message"]

    def chunked():  # no Content-Length: read up to the cap, then refused
        for _ in range(5):
            yield b" " * (1 << 20)

    response = httpx.post(server.base_url + "/v1/completions", content=chunked(),
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert httpx.get(server.base_url + "/health").status_code == 200


@pytest.mark.parametrize("key", [" 5", "5 ", "+5", "05", "5_0", "٥", "5.0", "-5", ""])
def test_logit_bias_keys_must_be_canonical_decimal_token_ids(server, key):
    body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1, "logit_bias": {key: 5}}
    response = httpx.post(server.base_url + "/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "logit_bias" and repr(key) in error["message"]
    assert httpx.post(server.base_url + "/v1/completions", json={**body, "logit_bias": {"50": 5}}).status_code == 200


def test_tokenizer_endpoints(server, offline_llm):
    tokenizer = offline_llm.get_tokenizer()
    tokens = httpx.post(server.base_url + "/tokenize", json={"prompt": "Hello tokenizer"}).json()
    assert tokens["tokens"] == tokenizer.encode("Hello tokenizer") and tokens["count"] == len(tokens["tokens"])
    assert tokens["max_model_len"] == 256
    chat = httpx.post(server.base_url + "/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert chat["count"] > tokens["count"] - 2  # the template adds role markers
    text = httpx.post(server.base_url + "/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"]
    assert text == "Hello tokenizer"
    info = httpx.get(server.base_url + "/tokenizer_info").json()
    assert info["vocab_size"] == 512 and info["chat_template"]


def test_fuzzing_the_openapi_schema_finds_no_server_error_and_no_accepted_invalid_input(server, tmp_path):
    schemathesis = shutil.which("schemathesis") or pytest.skip("schemathesis is not installed")
    # --max-time bounds the run (fuzzing repeats until it is spent); every operation in /openapi.json is hit.
    # negative_data_rejection: whatever breaks the schema (a message without content, ...) must be a 4xx: its
    # default list, plus 413, the answer to a body over --max-request-bytes (a generated 16 MB list of messages).
    config = tmp_path / "schemathesis.toml"
    config.write_text('[checks.negative_data_rejection]\nexpected-statuses = ["400", "401", "403", "404", "405", "406", '
                      '"409", "413", "415", "422", "428", "429"]\n')
    command = [schemathesis, "--config-file", str(config), "run", server.base_url + "/openapi.json",
               "--checks", "not_a_server_error,negative_data_rejection",
               "--max-examples", "20", "--max-time", "20", "--seed", "1", "--request-timeout", "30", "--workers", "1",
               "--no-color", "--generation-database", "none"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated and int(generated.group(1)) >= 50, output[-3000:]
    assert "10 selected" in output, output[:2000]
    assert server.ctx.engine.is_running
    server.wait_until_idle(timeout_s=60)
