"""The request body of `POST /v1/completions`, as vLLM's `CompletionRequest` reads it.

Field names, types and defaults are vLLM's (vllm/entrypoints/openai/completion/protocol.py), so a body that
a vLLM server accepts parses here the same way. Unlike our own API, unknown fields are ignored
(`extra="ignore"`), as vLLM ignores them: clients written for vLLM send fields of newer or older vLLM
versions. Fields vLLM knows but this server does not implement are refused by `unsupported_fields` when
they are set to anything but their no-op value, so no request is silently answered with other semantics.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from ...schemas import Float, Int, TokenIds

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # None: the first model given to `dualdistill serve --model`
    prompt: TokenIds | list[TokenIds] | str | list[str] | None = None
    echo: StrictBool | None = False
    logprobs: Int | None = None  # top logprobs per returned token (the legacy `logprobs` block); -1 = vocab
    max_tokens: Int | None = 16  # 0 only with echo (score the prompt, generate nothing)
    n: Int = 1
    seed: Int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    stream: StrictBool | None = False
    temperature: Float | None = None
    top_p: Float | None = None
    prompt_logprobs: Int | None = None  # top logprobs per prompt position (vLLM's extension); -1 = vocab
    return_tokens_as_token_ids: StrictBool | None = None
    return_token_ids: StrictBool | None = None
    add_special_tokens: StrictBool = True  # for text prompts
    # Our opt-in (vLLM has no such field and ignores it): compute the logprobs at `temperature`, i.e.
    # log_softmax(logits / temperature). Stock vLLM always reports raw logprobs (temperature 1).
    apply_temperature_to_logprobs: StrictBool | None = None

    # Known to vLLM, not implemented here: refused unless left at their no-op value (`unsupported_fields`).
    suffix: str | None = None
    use_beam_search: StrictBool = False
    top_k: Int | None = None
    min_p: Float | None = None
    repetition_penalty: Float | None = None
    presence_penalty: Float | None = None
    frequency_penalty: Float | None = None
    logit_bias: dict[str, Float] | None = None
    logprob_token_ids: list[Int] | None = None
    stop_token_ids: list[Int] | None = None
    ignore_eos: StrictBool = False
    min_tokens: Int = 0
    include_stop_str_in_output: StrictBool = False
    skip_special_tokens: StrictBool = True
    allowed_token_ids: list[Int] | None = None
    bad_words: list[str] | None = None
    prompt_embeds: Any = None
    response_format: Any = None
    structured_outputs: Any = None

    @model_validator(mode="before")
    @classmethod
    def _vllm_input_rules(cls, data: Any) -> Any:
        """vLLM's checks on the raw body, with its messages (CompletionRequest's `mode="before"` validators)."""
        if not isinstance(data, dict):
            return data
        if data.get("max_tokens") is None:  # explicit null means the default, as in vLLM
            data = {**data, "max_tokens": 16}
        for name in ("prompt_logprobs", "logprobs"):
            value = data.get(name)
            if value is not None and not isinstance(value, int | float):
                raise ValueError(f"`{name}` must be an integer.")
            if value is not None and value < 0 and value != -1:
                raise ValueError(f"`{name}` must be a positive value or -1.")
        prompt = data.get("prompt")
        if prompt is None or prompt == "" or prompt == []:
            raise ValueError("Either prompt or prompt_embeds must be provided and non-empty.")
        return data

    @field_validator("prompt")
    @classmethod
    def _no_empty_prompts(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and any(item in ([], "") for item in prompt):
            raise ValueError("every prompt of a batch must be non-empty")
        return prompt


# name -> the values that leave vLLM's behaviour unchanged (anything else would change the answer).
NO_OP_VALUES: dict[str, tuple] = {
    "suffix": (None,),
    "use_beam_search": (False,),
    "top_k": (None, 0, -1),
    "min_p": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "logprob_token_ids": (None, []),
    "stop_token_ids": (None, []),
    "ignore_eos": (False,),
    "min_tokens": (0,),
    "include_stop_str_in_output": (False,),
    "skip_special_tokens": (True,),
    "allowed_token_ids": (None, []),
    "bad_words": (None, []),
    "prompt_embeds": (None, []),
    "response_format": (None,),
    "structured_outputs": (None,),
    "stream": (None, False),
}


def unsupported_fields(request: CompletionRequest) -> list[str]:
    """Names of vLLM fields the request sets to a value this server does not implement."""
    return [name for name, no_op in NO_OP_VALUES.items() if getattr(request, name) not in no_op]


def prompt_batch(request: CompletionRequest) -> list[list[int]] | list[str]:
    """The request's prompts as a batch: one token-id list per prompt, or one text per prompt."""
    prompt = request.prompt
    if isinstance(prompt, str):
        return [prompt]
    assert isinstance(prompt, list) and prompt
    if isinstance(prompt[0], int):
        return [list(prompt)]  # type: ignore[arg-type]
    return list(prompt)  # type: ignore[arg-type]
