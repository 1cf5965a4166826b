"""Malformed chat messages and completions prompts, sent as a new user sends them: each gets OpenAI's 400
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


def user(content) -> dict:
    return {"role": "user", "content": content}


HI = user("Hi")
TEXT_PART = {"type": "text", "text": "Hi"}
NO_TOOLS = "function calling is not supported by this server"
# (messages, param, code, words the error message holds)
BAD_MESSAGES = [
    pytest.param([], "messages", "empty_array", "Invalid 'messages': empty array", id="no-messages"),
    pytest.param({"role": "user", "content": "Hi"}, "messages", "invalid_type", "Invalid type for 'messages'", id="not-a-list"),
    pytest.param(["Hi"], "messages[0]", "invalid_type", "expected an object, like {\"role\": \"user\"", id="message-not-an-object"),
    pytest.param([{"role": "user"}], "messages[0].content", "missing_required_parameter",
                 "Missing required parameter: 'messages[0].content'.", id="user-without-content"),
    pytest.param([{"role": "system"}, HI], "messages[0].content", "missing_required_parameter", "Missing required", id="system-without-content"),
    pytest.param([{"role": "developer", "content": None}, HI], "messages[0].content", "invalid_type", "(got null)",
                 id="developer-null-content"),
    pytest.param([user(None)], "messages[0].content", "invalid_type",
                 "Invalid type for 'messages[0].content': expected a string or an array of content parts (got null).", id="null-content"),
    pytest.param([user(5)], "messages[0].content", "invalid_type", "(got 5)", id="number-content"),
    pytest.param([HI, {"role": "assistant"}], "messages[1].content", "missing_required_parameter",
                 "Missing required parameter: 'messages[1].content'.", id="assistant-without-content"),
    pytest.param([HI, {"role": "assistant", "content": None}], "messages[1].content", "invalid_type", "(got null)",
                 id="assistant-null-content"),
    pytest.param([{"role": "robot", "content": "Hi"}], "messages[0].role", "invalid_value",
                 "expected one of 'system', 'developer', 'user', 'assistant', 'tool', 'function' (got \"robot\")", id="unknown-role"),
    pytest.param([{"content": "Hi"}], "messages[0].role", "missing_required_parameter", "'messages[0].role'", id="no-role"),
    pytest.param([{"role": 1, "content": "Hi"}], "messages[0].role", "invalid_type", "(got 1)", id="role-not-a-string"),
    pytest.param([{"role": "user", "content": "Hi", "name": 5}], "messages[0].name", "invalid_type",
                 "Invalid type for 'messages[0].name': input should be a valid string (got 5).", id="name-not-a-string"),
    pytest.param([user([])], "messages[0].content", "empty_array", "empty array", id="empty-content-list"),
    pytest.param([user([TEXT_PART, {"type": "video", "video": "x"}])], "messages[0].content[1].type", "invalid_value",
                 "expected one of 'text' (got \"video\")", id="unknown-part-type"),
    pytest.param([user([{"text": "Hi"}])], "messages[0].content[0].type", "missing_required_parameter", "Missing required",
                 id="part-without-type"),
    pytest.param([user([{"type": ["text"]}])], "messages[0].content[0].type", "invalid_type", "expected one of 'text'",
                 id="part-type-not-a-string"),
    pytest.param([user(["Hi"])], "messages[0].content[0]", "invalid_type", "expected an object, like {\"type\": \"text\"", id="part-not-an-object"),
    pytest.param([user([{"type": "text", "text": 5}])], "messages[0].content[0].text", "invalid_type", "valid string (got 5)",
                 id="text-not-a-string"),
    pytest.param([user([{"type": "text"}])], "messages[0].content[0].text", "missing_required_parameter", "Missing required",
                 id="text-part-without-text"),
    pytest.param([user([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}])],
                 "messages[0].content[0].type", "unsupported_value", "image_url parts (images) are not supported", id="image"),
    pytest.param([user([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}])],
                 "messages[0].content[0].type", "unsupported_value", "(audio) are not supported", id="audio"),
    pytest.param([user([{"type": "file", "file": {"file_id": "f"}}])], "messages[0].content[0].type", "unsupported_value",
                 "(files) are not supported", id="file"),
    pytest.param([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}, HI],
                 "messages[0].content[0].type", "unsupported_value", "not supported", id="system-image"),
    pytest.param([user([{"type": "refusal", "refusal": "No."}])], "messages[0].content[0].type", "invalid_value",
                 "expected one of 'text' (got \"refusal\")", id="refusal-part-from-user"),
    pytest.param([HI, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}],
                 "messages[1].tool_calls", "unsupported_value", NO_TOOLS, id="assistant-tool-calls"),
    pytest.param([HI, {"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": "{}"}}],
                 "messages[1].function_call", "unsupported_value", NO_TOOLS, id="assistant-function-call"),
    pytest.param([HI, {"role": "tool", "content": "42"}], "messages[1].tool_call_id", "missing_required_parameter",
                 "'messages[1].tool_call_id'", id="tool-without-tool-call-id"),
    pytest.param([HI, {"role": "tool", "content": "42", "tool_call_id": "c1"}], "messages[1].role", "unsupported_value",
                 "tool messages carry the results of tool calls, and " + NO_TOOLS, id="tool-message"),
    pytest.param([HI, {"role": "function", "content": "42"}], "messages[1].name", "missing_required_parameter",
                 "'messages[1].name'", id="function-without-name"),
    pytest.param([HI, {"role": "function", "name": "f", "content": "42"}], "messages[1].role", "unsupported_value",
                 NO_TOOLS, id="function-message"),
    pytest.param([user("bad \ud800 text")], "messages[0].content", "invalid_value", "lone surrogate '\\ud800' at position 4",
                 id="lone-surrogate"),
    pytest.param([user([TEXT_PART, {"type": "text", "text": "\udfff"}])], "messages[0].content[1].text", "invalid_value",
                 "lone surrogate", id="lone-surrogate-in-part"),
]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
@pytest.mark.parametrize("messages, param, code, words", BAD_MESSAGES)
def test_bad_messages_get_an_openai_400_naming_the_field(client, path, messages, param, code, words):
    assert_openai_400(post(client, path, {"messages": messages, "max_tokens": 1}), param, code, words)


def test_the_first_error_is_the_param_and_the_next_ones_are_told(client):
    messages = [{"role": "user"}, {"role": "robot", "content": "Hi"}, user([])]
    response = post(client, "/v1/chat/completions", {"messages": messages})
    assert_openai_400(response, "messages[0].content", "missing_required_parameter", "'messages[0].content'")
    assert "'messages[1].role'" in response.json()["error"]["message"]
    assert "'messages[2].content'" in response.json()["error"]["message"]


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


GOOD_MESSAGES = [
    pytest.param([HI], id="one-user-string"),
    pytest.param([{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                  {"role": "user", "content": [TEXT_PART, {"type": "text", "text": "there"}], "name": "ann"}], id="text-parts"),
    pytest.param([{"role": "developer", "content": "Be brief."}, HI,
                  {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}], "tool_calls": None, "name": "bot"},
                  user("Please?")], id="developer-and-assistant-refusal"),
    pytest.param([HI, {"role": "assistant", "content": "", "function_call": None}, user("")], id="empty-strings"),
]


@pytest.mark.parametrize("messages", GOOD_MESSAGES)
def test_messages_openai_accepts_are_served(client, messages):
    chat = post(client, "/v1/chat/completions", {"messages": messages, "max_tokens": 1})
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["role"] == "assistant"
    tokens = post(client, "/tokenize", {"messages": messages})
    assert tokens.status_code == 200 and tokens.json()["count"] == chat.json()["usage"]["prompt_tokens"]


def test_text_parts_read_as_their_texts_joined_by_newlines(client):
    parts = post(client, "/tokenize", {"messages": [user([TEXT_PART, {"type": "text", "text": "there"}])]}).json()
    joined = post(client, "/tokenize", {"messages": [user("Hi\nthere")]}).json()
    assert parts["tokens"] == joined["tokens"]


@pytest.mark.parametrize("prompt, choices", [("Hi", 1), (["Hi", "there"], 2), ([1, 2, 3], 1), ([[1, 2], [3]], 2)])
def test_prompt_shapes_openai_accepts_are_served(client, prompt, choices):
    response = post(client, "/v1/completions", {"prompt": prompt, "max_tokens": 1})
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == choices
