"""Test helpers shared by several test files."""
import copy
import json

import torch
from transformers import TrainerCallback

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


def small_teacher_tokenizer(corpus, vocab_size=320):
    """A fast tokenizer unlike SmolLM2's: Gemma's scheme (spaces as '▁', BPE, byte-fallback decoder)
    trained on `corpus`, with a vocabulary of `vocab_size` instead of Gemma's 262k, so that a teacher
    on it is a different-tokenizer teacher whose logits are cheap."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    alphabet = sorted(set(string.printable.replace(" ", "▁")) | set("".join(corpus).replace(" ", "▁")))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet,
                                  special_tokens=["<unk>", "<pad>", "<bos>", "<eos>"])
    tok.train_from_iterator([t.replace(" ", "▁") for t in corpus], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>")


class Killed(Exception):
    """What `KillAtFirstCheckpoint` raises: the run stops as a kill would stop it, right after a save."""


class KillAtFirstCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise Killed(f"killed at step {state.global_step}")
