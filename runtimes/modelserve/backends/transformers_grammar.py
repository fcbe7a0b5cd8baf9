"""Structured output on a transformers generation model: OpenAI ``response_format`` (json_object, json_schema) as a
``generate()`` logits processor that masks every token the JSON schema does not allow next, by llguidance (the
constrained-decoding library behind vLLM's "guidance" backend).

Chosen over xgrammar: llguidance is one 3 MB wheel with no dependencies; xgrammar 0.2.9 pulls triton and
apache-tvm-ffi on Linux (hundreds of MB) into MLServer's environment, and its torch mask kernel is compiled with
torch.compile, which on CPU needs a C compiler at run time. The mask is applied here with plain torch ops.
The output then parses and validates against the schema even with random weights, unless max_tokens cuts it.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ..errors import BadRequest, first_line


class Grammars:
    """One per model: llguidance's tokenizer (built once, ~1 s) and a matcher per request."""

    def __init__(self, tokenizer, vocab_size: int):
        self._hf, self._vocab, self._tokenizer = tokenizer, vocab_size, None

    def processor(self, schema: dict) -> Any:
        """A fresh transformers LogitsProcessor for one generation following ``schema`` (in the model thread)."""
        try:
            import llguidance
            import llguidance.hf
        except ImportError:
            raise BadRequest("response_format on backend HUGGINGFACE needs the llguidance package (pip install "
                             "'modelserve[huggingface]')") from None
        if self._tokenizer is None:
            try:
                self._tokenizer = llguidance.hf.from_tokenizer(self._hf, n_vocab=self._vocab)
            except ValueError as exc:  # a slow (Python) tokenizer
                raise BadRequest(f"response_format needs a fast tokenizer (tokenizer.json): {exc}") from None
        # compact JSON (no free whitespace, as vLLM's disable_any_whitespace): a model unsure of what comes next
        # could otherwise write whitespace until max_tokens; a schema's own "x-guidance" options override this
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                                    defaults={"whitespace_flexible": False})
            matcher = llguidance.LLMatcher(self._tokenizer, grammar)
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"response_format: the JSON schema cannot be followed: {first_line(exc)}") from None
        if matcher.is_error():
            raise BadRequest(f"response_format: the JSON schema cannot be followed: {matcher.get_error()}")
        return _SchemaLogits(matcher, self._vocab)


def _processor_base():
    from transformers import LogitsProcessor

    return LogitsProcessor


class _SchemaLogits(_processor_base()):  # type: ignore[misc]
    """Each step: the token just generated goes to the matcher, then the next token's scores keep only what the
    schema allows (EOS once the JSON is complete)."""

    def __init__(self, matcher, vocab: int):
        import llguidance.torch
        import torch

        self.matcher, self.vocab = matcher, vocab
        self.mask = llguidance.torch.allocate_token_bitmask(1, vocab)
        self.bits = torch.arange(32, dtype=torch.int32)
        self.prompt_len: Optional[int] = None

    def __call__(self, input_ids, scores):
        import llguidance.torch
        import torch

        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        elif not self.matcher.consume_token(int(input_ids[0, -1])):
            raise BadRequest(f"structured output failed: {self.matcher.get_error()}")
        llguidance.torch.fill_next_token_bitmask(self.matcher, self.mask)
        allowed = ((self.mask[0].unsqueeze(1) >> self.bits) & 1).flatten()[:scores.shape[1]]
        refused = torch.ones(scores.shape[1], dtype=torch.bool)  # beyond the tokenizer's vocabulary: refused
        refused[:allowed.shape[0]] = allowed == 0
        return scores.masked_fill(refused.to(scores.device).unsqueeze(0), float("-inf"))
