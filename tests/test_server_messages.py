"""Malformed completions prompts, sent as a new user sends them: each gets OpenAI's 400
{"error": {"message", "type", "param", "code"}} with `param` the path of the bad field, never a 200 or a
5xx; the shapes OpenAI accepts still work. In-process (TestClient, lifespan and engine running) over the
eager tiny model: no compile, no socket."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from bucketserve.entrypoints.openai.server import build_app, load_server_context


@pytest.fixture(scope="module")
def client(eager_dir):
    app = build_app(load_server_context(eager_dir, served_model_name="tiny"))
    # raise_server_exceptions: a request that ends in a 500 fails the test with the handler's traceback.
    with TestClient(app, raise_server_exceptions=True) as client:
        yield client


def post(client: TestClient, path: str, body) -> dict:
    # json.dumps escapes lone surrogates ("\ud800"), which httpx's own UTF-8 encoding of json= cannot send.
    response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    return response


def assert_openai_400(response, param: str | None, code: str | None, words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code), error
    assert words in error["message"], error


BAD_PROMPTS = [
    # The tiny tokenizer adds no BOS token, so "" is no token at all: nothing for the model to start from.
    pytest.param("", "prompt", None, "the prompt is empty after tokenization", id="empty-string"),
    pytest.param(["Hi", ""], "prompt", None, "empty after tokenization", id="empty-string-in-list"),
    pytest.param([], "prompt", "empty_array", "Invalid 'prompt': empty array", id="empty-list"),
    pytest.param([[]], "prompt[0]", "empty_array", "empty array", id="nested-empty-list"),
    pytest.param([[1, 2], []], "prompt[1]", "empty_array", "empty array", id="second-token-list-empty"),
    pytest.param(["Hi", 1], "prompt[1]", "invalid_type", "valid string (got 1)", id="strings-then-int"),
    pytest.param([1, "Hi"], "prompt[1]", "invalid_type", "valid integer (got \"Hi\")", id="ints-then-string"),
    pytest.param([[1], "Hi"], "prompt[1]", "invalid_type", "valid list", id="token-lists-then-string"),
    pytest.param([[1, 2], [[3]]], "prompt[1][0]", "invalid_type", "valid integer", id="too-deep"),
    pytest.param([5, -1], "prompt[1]", "invalid_value", "greater than or equal to 0 (got -1)", id="negative-token-id"),
    pytest.param([[1, 2], [3, -4]], "prompt[1][1]", "invalid_value", "(got -4)", id="negative-in-token-list"),
    pytest.param([1.5], "prompt[0]", "invalid_type", "valid integer (got 1.5)", id="float-token-id"),
    pytest.param([True], "prompt[0]", "invalid_type", "valid integer (got true)", id="bool-token-id"),
    pytest.param([None], "prompt[0]", "invalid_type", "(got null)", id="null-token-id"),
    pytest.param([1, 2, 99999], "prompt", None, "outside the vocabulary [0, 512)", id="token-id-over-vocabulary"),
    pytest.param(["Hi"] * 65, "prompt", "invalid_value", "at most 64 items", id="too-many-prompts"),
    pytest.param([[1]] * 65, "prompt", "invalid_value", "at most 64 items", id="too-many-token-lists"),
    pytest.param(None, "prompt", "invalid_type", "expected a string, an array of strings, an array of token ids or an "
                 "array of token-id arrays (got null)", id="null"),
    pytest.param(7, "prompt", "invalid_type", "(got 7)", id="number"),
    pytest.param({"text": "Hi"}, "prompt", "invalid_type", "expected a string", id="object"),
    pytest.param("\ud800", "prompt", "invalid_value", "lone surrogate", id="lone-surrogate"),
    pytest.param(["Hi", "\udfff"], "prompt[1]", "invalid_value", "lone surrogate", id="lone-surrogate-in-list"),
]


@pytest.mark.parametrize("prompt, param, code, words", BAD_PROMPTS)
def test_bad_completion_prompts_get_an_openai_400_naming_the_prompt(client, prompt, param, code, words):
    assert_openai_400(post(client, "/v1/completions", {"prompt": prompt, "max_tokens": 1}), param, code, words)


def test_missing_prompt_and_bad_tokenize_prompt(client):
    assert_openai_400(post(client, "/v1/completions", {"max_tokens": 1}), "prompt", "missing_required_parameter",
                      "Missing required parameter: 'prompt'.")
    assert_openai_400(post(client, "/tokenize", {"prompt": [1, 2]}), "prompt", "invalid_type", "valid string")
    assert_openai_400(post(client, "/tokenize", {"prompt": "\ud800"}), "prompt", "invalid_value", "lone surrogate")


@pytest.mark.parametrize("prompt, choices", [("Hi", 1), (["Hi", "there"], 2), ([1, 2, 3], 1), ([[1, 2], [3]], 2)])
def test_prompt_shapes_openai_accepts_are_served(client, prompt, choices):
    response = post(client, "/v1/completions", {"prompt": prompt, "max_tokens": 1})
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == choices
