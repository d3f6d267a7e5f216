"""The TRL members autothink touches beyond the public API, pinned to trl 1.16.0.

`training/step_srpo.py` (Step-SRPO), `training/agentic_rl.py` (agent rl) and their shared
`training/grpo_parts.py` override `GRPOTrainer` methods and call or read a few more private ones.
Each entry records the signature and a hash of the source in the pinned TRL and what to re-check
when it changes; a TRL upgrade fails here first, loudly, with the list.
"""
import hashlib
import inspect

import trl

from autothink.training.agentic_rl import AgentRLTrainer
from autothink.training.grpo_parts import GRPOParts
from autothink.training.step_srpo import StepSRPOTrainer

# name: (signature, sha256[:16] of the source, what to re-check in the trainers)
GRPO_METHODS = {
    "_generate_single_turn": (
        "(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False)", "e0f02e4fc094cefd",
        ("it still takes the prompt token ids per row and returns (completion_ids, logprobs) per row, with the "
         "completion ending at EOS; it reads its limits from generation_config / generation_kwargs / eos_token_ids "
         "(vLLM: vllm_generation.max_completion_length / generation_kwargs) at each call, which the two-phase "
         "forced rollouts set per call; the forced prefill appends to the prompt ids and prepends to the "
         "completion")),
    "_generate": (
        "(self, prompts: list)", "2a27fdf8f5e6f356",
        ("prompt_ids still come from _tokenize_prompts (not from _generate_single_turn), so the prefill ends up in "
         "the completion; completions are decoded from the returned completion ids")),
    "_calculate_rewards": (
        "(self, inputs, prompts, completions, completion_ids_list)", "736ae29b083840b5",
        ("it still returns the gathered [N_global, n_funcs] rewards, column 0 being verifier_reward, and is called "
         "once per batch after generation")),
    "_generate_and_score_completions": (
        "(self, inputs: list[dict[str, torch.Tensor | typing.Any]]) -> dict[str, torch.Tensor | typing.Any]",
        "1fa48922792dcd5c",
        ("its output keeps prompt_ids/prompt_mask/completion_ids/completion_mask/num_items_in_batch in the local "
         "row order of `inputs`, rows are grouped by num_generations globally, every tensor key of the output "
         "(srpo_loss_mask too) is split into micro-batches, and `advantages` is only consumed by _compute_loss")),
    "_compute_loss": (
        "(self, model, inputs)", "80295546bbdbf6f7",
        ("it still accepts [B, T] advantages and multiplies completion_mask by inputs['tool_mask'] for the loss "
         "only (not for attention), which is where Step-SRPO's mask joins TRL's tool mask")),
    "_get_train_sampler": (
        "(self, dataset: datasets.arrow_dataset.Dataset | None = None) -> torch.utils.data.sampler.Sampler",
        "36497afb4d311dc9",
        ("the dataloader still expects RepeatSampler's layout (each prompt G times in a row, each generation batch "
         "repeated num_iterations × steps_per_generation times), which SRPOSampler reproduces")),
    "_save_checkpoint": (
        "(self, model, trial)", "ec91bde123649111",
        "the checkpoint folder is still <output_dir>/checkpoint-<global_step> when super() returns"),
    "_load_optimizer_and_scheduler": (
        "(self, checkpoint)", "5c1772becdfd7fdb",
        ("it is still called with the checkpoint path after the trainer state is loaded and before the dataloader "
         "is iterated (the SRPO schedule is restored there)")),
    "_get_per_token_logps_and_entropies": (
        "(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, "
        "compute_aux_loss=False, pixel_values=None, image_grid_thw=None, num_images=None, pixel_attention_mask=None, "
        "spatial_shapes=None, num_tiles=None, image_sizes=None, token_type_ids=None, mm_token_type_ids=None, "
        "image_position_ids=None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]",
        "ea73c3909275851d",
        ("it still returns (logps, entropies, aux) with entropies [B, logits_to_keep] when compute_entropy (for μ), "
         "is the one log-prob pass of old, reference and policy log-probs (overridden with --packing trie), scores "
         "the last logits_to_keep columns at HF's default positions (the column index) with 0 off the mask, and "
         "divides the logits by self.temperature")),
    "_tool_call_loop": (
        "(self, prompts, prompt_ids, completion_ids, completions, logprobs, images, multimodal_fields)",
        "1c501f7f3b469f7e",
        ("agent rl replaces it whole: it is still called by _generate after the first turn with one completion per "
         "row (self._sync_tool_dicts / self.environments in row order) and must return (tool_mask, completions, "
         "completion_ids, logprobs, tool_call_count, tool_failure_count, tool_images), tool_mask 0 on tool tokens, "
         "logprobs 0.0 there; it still regenerates through _generate_single_turn(ids, images, fields, 1)")),
    "_get_tool_suffix_ids": (
        "(self, tool_messages)", "e62362aef61aa88c",
        ("it still returns the token ids that follow an assistant turn ending at EOS: the tool messages "
         "({role, name, content}) and the next assistant header, for concatenation without re-tokenising")),
    "_tokenize_prompts": (
        "(self, prompts: list)", "d2d27f7c9bfda85f",
        "it still renders each prompt with tools=self._env_tools[<its environment>], which agent rl sets to schemas"),
    "_log_completion_extra": (
        "(self, column: str, values: list)", "afe43ddaa96cfd5c",
        "it still adds one column of per-local-row values to the completion tables"),
    "_get_output_dir": (
        "(self, trial: 'optuna.Trial | dict[str, Any] | None') -> str", "97172085342ac46c",
        "it still returns the run's output dir, which holds the checkpoint-N folders"),
}

# Source lines that must still be in TRL: (where, line, why autothink relies on it).
GRPO_SOURCE = [
    ("__init__", 'self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}',
     "srpo/... metrics are appended to self._metrics[mode][key] and logged with TRL's own"),
    ("__init__", "self.num_generations_eval", "the eval group size of Step-SRPO's groups"),
    ("_compute_loss", 'mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]',
     "the loss mask of Step-SRPO (no loss on forced prefixes) reaches the loss through inputs['tool_mask']"),
    ("__init__", "self._environment_pool[name] = [instance]",
     "agent rl reads one pooled instance per environment to give the prompts our tool schemas"),
    ("_calculate_rewards", 'reward_kwargs["environments"] = self.environments',
     "agent rl executes each rollout's calls in self.environments[i], the instance TRL resets and scores"),
    ("_generate", "self._tool_call_loop(",
     "agent rl's tool loop (with early termination) is where TRL plays the later turns"),
    ("_generate_single_turn", "generation_kwargs=self.generation_kwargs,",
     "phase 1 of a forced rollout stops at </judge>: its max_new_tokens and eos ids reach generate this way"),
    ("_generate_single_turn", "**generate_inputs, generation_config=self.generation_config",
     "... and this way"),
    ("_generate_single_turn", "is_eos = torch.isin(completion_ids, torch.tensor(self.eos_token_ids, device=device))",
     "the completion is cut after the first of eos_token_ids, which phase 1 extends with the judge's stop tags"),
]
# The same for TRL's vLLM generation (`trainer.vllm_generation`): its limits are read at each call.
VLLM_SOURCE = [
    "max_completion_length = self.max_completion_length",
    '"generation_kwargs": self.generation_kwargs,',  # server mode
    "generation_kwargs.update(self.generation_kwargs)",  # colocate mode
]


def _digest(method) -> tuple[str, str]:
    return str(inspect.signature(method)), hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]


def test_trl_is_the_pinned_version():
    assert trl.__version__ == "1.16.0", (
        f"TRL is {trl.__version__}; the Step-SRPO trainer was written against 1.16.0: re-check every entry of "
        "tests/contracts/test_trl.py against autothink/training/step_srpo.py, then update the pin and the values")


def test_grpo_methods_are_unchanged():
    for name, (signature, digest, recheck) in GRPO_METHODS.items():
        got = _digest(getattr(trl.GRPOTrainer, name))
        assert got == (signature, digest), (
            f"trl.GRPOTrainer.{name} changed ({got}); StepSRPOTrainer overrides or relies on it. Re-check that "
            f"{recheck}; then record the new signature and hash here")


def test_grpo_source_lines_are_still_there():
    for where, line, why in GRPO_SOURCE:
        assert line in inspect.getsource(getattr(trl.GRPOTrainer, where)), (
            f"trl.GRPOTrainer.{where} no longer has `{line}`: {why}")


def test_vllm_generation_reads_its_limits_at_each_call():
    from trl.generation.vllm_generation import VLLMGeneration

    source = inspect.getsource(VLLMGeneration.generate)
    for line in VLLM_SOURCE:
        assert line in source, f"VLLMGeneration.generate no longer has `{line}`: StepSRPOTrainer._generation_limits"


def test_every_override_has_an_entry():
    for cls in (StepSRPOTrainer, AgentRLTrainer, GRPOParts):
        overridden = {n for n, v in vars(cls).items() if callable(v) and hasattr(trl.GRPOTrainer, n)}
        missing = overridden - {"__init__"} - set(GRPO_METHODS)
        assert not missing, f"{cls.__name__} overrides {missing} without a contract entry"


def test_grpo_accepts_the_coding_environment_and_parses_our_tool_calls(tokenizer, tmp_path):
    """TRL 1.16's `environment_factory` takes `CodingEnvironment` as is: its tools, its reward, our tool template
    (with TRL's own Qwen3 response template parsing the `<tool_call>` blocks it renders)."""
    import copy

    from datasets import Dataset
    from trl.chat_template_utils import qwen3_template

    from autothink.environments.coding import CodingEnvironment
    from autothink.format import add_autothink_tokens
    from autothink.models import tiny_model
    from autothink.tasks.tool_calls import ensure_tool_template

    model, tok = tiny_model(copy.deepcopy(tokenizer))
    add_autothink_tokens(tok, model)
    ensure_tool_template(tok)
    tok.response_template = qwen3_template
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "Write add(a, b)."}],
                               "reference": "assert add(1, 2) == 3"}] * 4)
    args = trl.GRPOConfig(output_dir=str(tmp_path), report_to="none", num_generations=2, per_device_train_batch_size=2,
                          max_completion_length=8, max_steps=1, bf16=False, gradient_checkpointing=False)
    trainer = trl.GRPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                              environment_factory=CodingEnvironment)
    assert sorted(t.__name__ for t in trainer.tools) == ["list_files", "read_file", "run_python", "run_tests",
                                                         "write_file"]
    assert trainer.reward_func_names == ["CodingEnvironment"]
    text = tok.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "Writing.",
                                    "tool_calls": [{"type": "function", "function": {
                                        "name": "write_file", "arguments": {"path": "solution.py", "content": "1"}}}]}],
                                   tokenize=False)
    prompt = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    parsed = tok.parse_response(text[len(prompt):], prefix=prompt)
    assert parsed["content"] == "Writing." and parsed["tool_calls"][0]["function"] == {
        "name": "write_file", "arguments": {"path": "solution.py", "content": "1"}}


def test_grpo_accepts_a_bfcl_environment_class(tokenizer, tmp_path):
    """Each BFCL API combination is a class TRL's `environment_factory` probes for tools and a reward."""
    import copy

    from datasets import Dataset
    from trl.chat_template_utils import qwen3_template

    from autothink.environments.bfcl import bfcl_environment_class, function_docs
    from autothink.format import add_autothink_tokens
    from autothink.models import tiny_model
    from autothink.tasks.tool_calls import ensure_tool_template

    model, tok = tiny_model(copy.deepcopy(tokenizer))
    add_autothink_tokens(tok, model)
    ensure_tool_template(tok)
    tok.response_template = qwen3_template
    args = trl.GRPOConfig(output_dir=str(tmp_path), report_to="none", num_generations=2, per_device_train_batch_size=2,
                          max_completion_length=8, max_steps=1, bf16=False, gradient_checkpointing=False)
    env_class = bfcl_environment_class(("GorillaFileSystem", "TwitterAPI"))
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "List the files."}]}] * 4)
    trainer = trl.GRPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                              environment_factory=env_class)
    names = {d["name"] for api in env_class.APIS for d in function_docs(api)}
    assert {t.__name__ for t in trainer.tools} == names and trainer.reward_func_names == [env_class.__name__]
