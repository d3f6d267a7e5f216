"""Test helpers shared by several test files."""
import copy
import json

import torch

from autothink.format import add_autothink_tokens
from autothink.models import tiny_model


def varied_tiny(tokenizer, autothink=False):
    """tiny_model with an untied random output head.

    `tiny_model` ties the head to the embeddings, so its greedy output just repeats the last prompt
    token; with a separate head the output depends on the whole prompt, which these tests need.
    """
    model, tok = tiny_model(copy.deepcopy(tokenizer))
    if autothink:
        add_autothink_tokens(tok, model)
    g = torch.Generator().manual_seed(1)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=g) * 0.5)
    model.config.tie_word_embeddings = False
    return model, tok


def rl_prompt_rows(tasks):
    """RL prompt rows (the `rl_prompts.jsonl` schema) for tasks; tiers >= 3 get the prior mode "on"."""
    return [{"id": t.id, "prompt": t.messages, "verifier": t.verifier, "reference": json.dumps(t.reference),
             "difficulty": t.difficulty, "domain": t.domain, "prior_mode": "on" if t.difficulty >= 3 else "off"}
            for t in tasks]
