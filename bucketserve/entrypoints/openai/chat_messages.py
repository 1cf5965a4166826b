"""A chat request's `messages`, checked as OpenAI checks them: one model per role (what it needs, what it may
carry), content as a string or a non-empty list of parts, and a 400 for what this server does not do:
image, audio and file parts, tool calls and the tool / function messages that answer them."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from .validation import RequestModel, Text, by_json_type, tagged, value_error

MAX_MESSAGES = 4096
MAX_CONTENT_PARTS = 1024
# Part types OpenAI defines that a text-only model cannot read.
UNSUPPORTED_PARTS = {"image_url": "images", "input_audio": "audio", "file": "files"}
CONTENT_EXPECTED = "expected a string or an array of content parts"
NO_FUNCTION_CALLING = "function calling is not supported by this server"


class TextPart(RequestModel):
    type: Literal["text"]
    text: Text


class RefusalPart(RequestModel):
    """An earlier assistant refusal, replayed in the conversation; the model reads its text."""
    type: Literal["refusal"]
    refusal: Text


def _content(*part_models: type[TextPart | RefusalPart]) -> Any:
    """Content as a string or a non-empty list of parts, each one of part_models (told apart by "type")."""
    refused = {kind: f"{kind} parts ({what}) are not supported: this server runs a text-only model; send text parts"
               for kind, what in UNSUPPORTED_PARTS.items()}
    part = tagged("type", list(part_models), '{"type": "text", "text": "Hi"}', refused)
    parts = Annotated[list[part], Field(min_length=1, max_length=MAX_CONTENT_PARTS)]
    return by_json_type(Text | parts, CONTENT_EXPECTED.removeprefix("expected "), {str: Text, list: parts})


TextContent = _content(TextPart)  # OpenAI's image_url, input_audio and file parts: refused (UNSUPPORTED_PARTS)
AssistantContent = _content(TextPart, RefusalPart)


class SystemMessageParam(RequestModel):
    role: Literal["system"]
    content: TextContent
    name: Text | None = None


class DeveloperMessageParam(SystemMessageParam):
    role: Literal["developer"]


class UserMessageParam(RequestModel):
    role: Literal["user"]
    content: TextContent
    name: Text | None = None


class AssistantMessageParam(RequestModel):
    """An earlier assistant reply. OpenAI lets content be left out (or null) when the message has tool calls;
    those are refused here, so a message without them needs content."""
    role: Literal["assistant"]
    content: AssistantContent | None = None
    name: Text | None = None
    tool_calls: list | None = None
    function_call: dict | None = None  # OpenAI's deprecated predecessor of tool_calls

    @field_validator("tool_calls", "function_call")
    @classmethod
    def _no_function_calling(cls, value: Any) -> None:
        if value is not None:
            raise value_error("unsupported_value", f"{NO_FUNCTION_CALLING}; send the assistant's earlier replies as content", value)
        return None

    @model_validator(mode="after")
    def _content_required(self):  # runs only when the fields are valid: without tool calls
        if self.content is None:
            if "content" in self.model_fields_set:
                raise value_error("invalid_type", CONTENT_EXPECTED, None, "content")
            raise value_error("missing", "", None, "content")
        return self


class _FunctionResult(RequestModel):
    """A message that answers a tool call. Its shape is checked as OpenAI does (so a malformed one gets
    OpenAI's error), then it is refused: the calls it answers cannot have come from this server."""

    @model_validator(mode="after")
    def _refused(self):
        raise value_error("unsupported_value", f"{self.role} messages carry the results of tool calls, and "
                                               f"{NO_FUNCTION_CALLING}", self.role, "role")


class ToolMessageParam(_FunctionResult):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: str


class FunctionMessageParam(_FunctionResult):
    """OpenAI's deprecated predecessor of the tool message."""
    role: Literal["function"]
    content: Text | None
    name: str


MESSAGE_MODELS = [SystemMessageParam, DeveloperMessageParam, UserMessageParam, AssistantMessageParam, ToolMessageParam,
                  FunctionMessageParam]


# What a request's messages validate to (tool and function messages never get through).
ChatMessage = SystemMessageParam | DeveloperMessageParam | UserMessageParam | AssistantMessageParam
ChatMessages = Annotated[
    list[tagged("role", MESSAGE_MODELS, '{"role": "user", "content": "Hi"}')],
    Field(min_length=1, max_length=MAX_MESSAGES)]


def content_text(content: str | list[TextPart | RefusalPart]) -> str:
    """The text the chat template gets: parts joined by newlines, as vLLM joins them."""
    if isinstance(content, str):
        return content
    return "\n".join(part.text if isinstance(part, TextPart) else part.refusal for part in content)

