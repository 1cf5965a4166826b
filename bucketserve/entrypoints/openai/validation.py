"""What every request model is built from: strict parsing, text that a tokenizer can take, and `one_of`
for a field that takes several shapes. Every error keeps the path of the value it is about
(messages.1.content.0.type), which errors.py turns into OpenAI's `param`."""
from __future__ import annotations

import operator
from collections.abc import Callable
from functools import reduce
from typing import Annotated, Any, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

# strict: "5" is not an int and 1.0 is not an n; no NaN or infinity anywhere.
STRICT = ConfigDict(strict=True, allow_inf_nan=False)


class RequestModel(BaseModel):
    # Unknown fields are ignored, as OpenAI clients send options we do not implement.
    model_config = ConfigDict(**STRICT, extra="ignore")


def value_error(code: str, message: str, value: Any, *loc: str | int) -> ValidationError:
    """A validation error about `value`, at `loc` below the value being validated; `code` is what errors.py
    reports as OpenAI's `code` ("missing" for a required field that is absent)."""
    error_type = "missing" if code == "missing" else PydanticCustomError(code, message)
    return ValidationError.from_exception_data("request", [{"type": error_type, "loc": loc, "input": value}])


def one_of(schema: Any, choose: Callable[[Any], TypeAdapter]) -> Any:
    """`schema` (a union, as /openapi.json shows it) validated as the one member `choose` picks from the raw
    value; `choose` raises value_error(...) for a value that fits none.

    Request models use this instead of pydantic unions, which try every member and label each error with the
    member's tag (messages.0.user.content.list[...].0.type): the path then no longer names the value, and a
    value that fits no member gets one error per member. `choose` must only inspect: any exception but a
    ValidationError would be a 500."""
    return Annotated[schema, PlainValidator(lambda value: choose(value).validate_python(value), json_schema_input_type=schema)]


def by_json_type(schema: Any, expected: str, shapes: dict[type, Any]) -> Any:
    """one_of over shapes that differ in their JSON type (string, array, object): {str: A, list: B}."""
    adapters = {json_type: TypeAdapter(shape, config=STRICT) for json_type, shape in shapes.items()}

    def choose(value: Any) -> TypeAdapter:
        adapter = adapters.get(type(value))
        if adapter is None:
            raise value_error("invalid_type", f"expected {expected}", value)
        return adapter

    return one_of(schema, choose)


def tagged(tag_field: str, models: list[type[BaseModel]], example: str, refused: dict[str, str] | None = None) -> Any:
    """one_of over objects told apart by `tag_field` (a message's role, a content part's type), each model
    taking one Literal value of it; refused: tags OpenAI defines that this server turns away, with why."""
    adapters = {_literal(model, tag_field): TypeAdapter(model) for model in models}
    refused = refused or {}
    expected = "expected one of " + ", ".join(repr(tag) for tag in adapters)

    def choose(value: Any) -> TypeAdapter:
        if not isinstance(value, dict):
            raise value_error("invalid_type", f"expected an object, like {example}", value)
        if tag_field not in value:
            raise value_error("missing", "", value, tag_field)
        tag = value[tag_field]
        if not isinstance(tag, str):
            raise value_error("invalid_type", expected, tag, tag_field)
        if tag in refused:
            raise value_error("unsupported_value", refused[tag], tag, tag_field)
        if tag not in adapters:
            raise value_error("invalid_value", expected, tag, tag_field)
        return adapters[tag]

    union = reduce(operator.or_, models)
    return one_of(Annotated[union, Field(discriminator=tag_field)] if len(models) > 1 else union, choose)


def _literal(model: type[BaseModel], field: str) -> str:
    """The one value a Literal field of `model` takes: the tag that picks the model."""
    (value,) = get_args(model.model_fields[field].annotation)
    return value


def _tokenizable(text: str) -> str:
    # JSON's \ud800 escapes decode to lone surrogates, which are not Unicode: tokenizers raise on them.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise PydanticCustomError(
                "invalid_value", f"the text holds a lone surrogate {text[error.start]!r} at position {error.start}, "
                                 "which is not valid Unicode; escape a character outside the BMP as a surrogate pair") from None
    return text


# Text the model reads (prompts, message content, names): it must be valid Unicode.
Text = Annotated[str, AfterValidator(_tokenizable)]
