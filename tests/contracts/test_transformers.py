"""The transformers (and uvicorn, argparse) members autothink touches beyond their public API,
pinned to the versions in pyproject.toml; a change fails here first, with what to re-check."""
import argparse
import hashlib
import inspect

import transformers
import uvicorn
from transformers import HfArgumentParser, PretrainedConfig, PreTrainedModel, Trainer

from autothink.training.distill import DistillTrainer
from autothink.training.trie_packing import TrieTrainerMixin

# Trainer methods DistillTrainer and TrieTrainerMixin override or call: (signature, sha256[:16] of the source,
# what to re-check).
TRAINER_METHODS = {
    "_get_num_items_in_batch": (
        "(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None", "a31fa106f70db1b9",
        ("get_batch_samples still takes the step's normaliser from it over all of the step's micro-batches, and "
         "passes it to compute_loss as num_items_in_batch (TrieTrainerMixin returns the summed pack weights)")),
    "_prepare_inputs": (
        "(self, inputs: dict[str, torch.Tensor | typing.Any]) -> dict[str, torch.Tensor | typing.Any]",
        "8f8c4e430d2f96d6",
        "it still moves the tensors nested in lists of dicts (a micro-batch of packs) to the device"),
    "_save": (
        "(self, output_dir: str | None = None, state_dict: dict | None = None) -> None", "b136889e87928376",
        "save_model still ends in self._save(output_dir, state_dict) and writes TRAINING_ARGS_NAME there"),
    "_load_from_checkpoint": (
        "(self, resume_from_checkpoint: str, model: torch.nn.modules.module.Module | None = None) -> None",
        "a2804e8d93a297e3",
        "it still loads the model weights of a checkpoint dir on resume (the MTP student loads base + heads)"),
}

# (object, attribute or source line, where autothink uses it)
SOURCE_LINES = [
    (Trainer.training_step, "loss_is_scaled_for_ga",
     "DistillTrainer sets it False (its loss is a per-batch mean), TrieTrainerMixin True (over the step's weight)"),
    (Trainer.get_batch_samples, "self._get_num_items_in_batch(batch_samples, device)",
     "TrieTrainerMixin's normaliser is the whole optimizer step's"),
    (Trainer.save_model, "self._save(", "DistillTrainer._save writes an MTP student as base files + heads"),
    (PreTrainedModel.save_pretrained, 'hf_quantizer = getattr(self, "hf_quantizer", None)',
     "models.prepare sets hf_quantizer = None to save a dequantized GGUF model as plain fp32"),
    (uvicorn.Server, "self._captured_signals.append(sig)",
     "serve.DrainingServer.handle_exit appends the signal so uvicorn re-raises it after draining"),
]


def _digest(method) -> tuple[str, str]:
    return str(inspect.signature(method)), hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]


def test_pinned_versions():
    assert transformers.__version__ == "5.23.0", "re-check tests/contracts/test_transformers.py, then update the pin"


def test_trainer_methods_are_unchanged():
    for name, (signature, digest, recheck) in TRAINER_METHODS.items():
        got = _digest(getattr(Trainer, name))
        assert got == (signature, digest), f"Trainer.{name} changed ({got}): re-check that {recheck}"
    overridden = {n for cls in (DistillTrainer, TrieTrainerMixin) for n, v in vars(cls).items()
                  if n.startswith("_") and not n.startswith("__") and callable(v) and hasattr(Trainer, n)}
    assert overridden <= set(TRAINER_METHODS), f"private overrides without a contract entry: {overridden}"


def test_source_lines_are_still_there():
    for obj, line, why in SOURCE_LINES:
        assert line in inspect.getsource(obj), f"{obj.__qualname__} no longer has `{line}`: {why}"


def test_attention_implementation_and_masks():
    # training/sft.py reads config._attn_implementation to refuse packing that would leak across samples
    assert isinstance(inspect.getattr_static(PretrainedConfig, "_attn_implementation"), property)
    # models/mtp.py builds its block's mask with these, by keyword
    from transformers.masking_utils import (
        create_causal_mask,
        create_sliding_window_causal_mask,
    )

    for make_mask in (create_causal_mask, create_sliding_window_causal_mask):
        params = inspect.signature(make_mask).parameters
        assert {"config", "inputs_embeds", "attention_mask", "past_key_values", "position_ids"} <= set(params)


def test_argument_parser_features_the_cli_relies_on():
    """config.parse_config: dash spellings of every flag, `aliases`, and argparse's `_actions` list."""
    import dataclasses

    @dataclasses.dataclass
    class Options:
        max_tokens: int = 1
        output: str = dataclasses.field(default="", metadata={"aliases": ["-o"]})

    parser = HfArgumentParser(Options)
    assert isinstance(parser, argparse.ArgumentParser)
    assert vars(parser.parse_args(["--max-tokens", "3", "-o", "x"])) == {"max_tokens": 3, "output": "x"}
    assert any("--max_tokens" in a.option_strings for a in parser._actions)
