"""`autothink run RECIPE.yaml`: recipe checks before any work, stage wiring, skip-when-done, and the
shipped recipes and accelerate configs."""
from pathlib import Path

import pytest
import yaml

from autothink import pipeline
from autothink.cli import main
from autothink.pipeline import load_recipe, run_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _recipe(tmp_path, stages, **top):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), **top, "stages": stages}, sort_keys=False))
    return path


def test_stages_are_wired_to_the_ones_before(tmp_path):
    path = _recipe(tmp_path, {"tag": {"input": "arithmetic", "n": 4}, "coldstart": {}, "eval:base": {},
                              "sft": {"max_steps": 2}, "rl": {"max_steps": 1}, "eval": {"n": 2}},
                   model="smollm2-135m-instruct")
    out, stages = load_recipe(path)
    run = tmp_path / "run"
    assert out == run and [s.name for s in stages] == ["tag", "coldstart", "eval:base", "sft", "rl", "eval"]
    by = {s.name: s.config for s in stages}
    assert by["tag"].output_dir == by["coldstart"].output_dir == str(run / "data")
    assert by["coldstart"].input == str(run / "data" / "tagged.jsonl")
    assert by["eval:base"].model == "smollm2-135m-instruct" and by["eval:base"].output_dir == str(run / "eval-base")
    assert (by["sft"].model, by["sft"].data) == ("smollm2-135m-instruct", str(run / "data" / "coldstart.jsonl"))
    assert (by["rl"].model, by["rl"].data) == (str(run / "sft"), str(run / "data" / "rl_prompts.jsonl"))
    assert by["eval"].model == str(run / "rl") and by["eval"].n == 2
    assert by["sft"].max_steps == 2 and by["sft"].report_to in ([], "none")  # no TensorBoard unless asked


@pytest.mark.parametrize("stages, message", [
    ({"tag": {"inptu": "arithmetic"}}, r"stages.tag: unknown option 'inptu' for TagConfig; did you mean 'input'"),
    ({"sft": {"max_step": 3}}, r"stages.sft: unknown option 'max_step' .*did you mean 'max_steps'"),
    ({"evl": {}}, r"unknown stage 'evl'; did you mean 'eval'"),
    ({"rl": {"forced_fraction": 2.0}}, r"stages.rl: forced_fraction must be in \[0, 1\]"),
    ({"tag": ["input", "arithmetic"]}, r"stages.tag: expected a mapping"),
])
def test_bad_recipes_fail_before_any_work(tmp_path, stages, message, monkeypatch):
    import importlib

    for job in pipeline.STAGES.values():  # any stage starting would fail the test
        monkeypatch.setattr(importlib.import_module(job.module), job.run, lambda *a, **k: pytest.fail("a stage ran"))
    with pytest.raises(ValueError, match=message):
        run_recipe(_recipe(tmp_path, {"tag": {"input": "arithmetic"}, **stages}))
    assert not (tmp_path / "run").exists()


def test_a_typo_at_the_top_and_bad_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("output_dir: x\nmodle: y\nstages: {tag: {}}\n")
    with pytest.raises(ValueError, match="unknown key 'modle'; did you mean 'model'"):
        load_recipe(path)
    path.write_text("stages: [tag\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_recipe(path)
    with pytest.raises(FileNotFoundError, match="no recipe file"):
        load_recipe(tmp_path / "missing.yaml")
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2


def test_finished_stages_are_skipped_and_a_changed_one_is_refused(tmp_path, capsys):
    stages = {"tag": {"input": "arithmetic", "n": 5}}
    path = _recipe(tmp_path, stages)
    state = run_recipe(path)
    tagged = tmp_path / "run" / "data" / "tagged.jsonl"
    assert state["tag"]["result"] == {"records": 5, "ok": 5} and len(tagged.read_text().splitlines()) == 5
    first = tagged.stat().st_mtime_ns
    assert main(["run", str(path)]) == 0
    assert "tag: done earlier, skipped" in capsys.readouterr().out and tagged.stat().st_mtime_ns == first
    path = _recipe(tmp_path, {"tag": {"input": "arithmetic", "n": 6}})
    with pytest.raises(ValueError, match="stage 'tag' finished earlier with other options"):
        run_recipe(path)


@pytest.mark.parametrize("name", ["quickstart.yaml", "gpu.yaml"])
def test_shipped_recipes_load(name):
    out, stages = load_recipe(RECIPES / name)
    jobs = [s.job for s in stages]
    assert jobs[0] == "tag" and jobs[-1] == "eval" and {"coldstart", "sft", "rl"} <= set(jobs)


@pytest.mark.parametrize("name", ["agentic_cpu.yaml", "agentic_gpu.yaml"])
def test_agentic_recipes_load_and_chain_sft_rl_eval(name):
    out, stages = load_recipe(RECIPES / name)
    by_name = {s.name: s for s in stages}
    assert [s.job for s in stages if s.job in ("agent_sft", "agent_rl")] == ["agent_sft", "agent_rl"]
    sft, rl, final = by_name["agent_sft"], by_name["agent_rl"], by_name["agent_eval"]
    assert rl.config.model == sft.config.output_dir and final.config.backend == rl.config.output_dir
    assert rl.config.lam > 0 and rl.config.mu > 0  # difficulty/entropy-aware advantages on by default
    assert final.config.skip >= rl.config.skip + rl.config.n  # evaluated on tasks RL never saw


def test_accelerate_configs_are_valid():
    from accelerate.commands.config.config_args import ClusterConfig

    kinds = {p.name: ClusterConfig.from_yaml_file(p).distributed_type for p in (RECIPES / "accelerate").glob("*.yaml")}
    assert {k: v.value for k, v in kinds.items()} == {
        "multi_gpu.yaml": "MULTI_GPU", "fsdp2.yaml": "FSDP", "deepspeed_zero2.yaml": "DEEPSPEED"}
    # With SHARDED_STATE_DICT, transformers' save_model writes no final weights (FSDP itself needs GPUs:
    # accelerate runs a `use_cpu` launch of this config as DDP, so CI cannot exercise the save).
    fsdp = ClusterConfig.from_yaml_file(RECIPES / "accelerate" / "fsdp2.yaml").fsdp_config
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_every_stage_uses_and_checks_the_model_it_is_given(tmp_path):
    path = _recipe(tmp_path, {"tag": {"input": "arithmetic", "n": 2}, "coldstart": {}}, model="smollm2-135m-instruct")
    _, stages = load_recipe(path)
    assert stages[1].config.on_backend == "smollm2-135m-instruct"  # the recipe's model samples the cold start
    with pytest.raises(ValueError, match="model: unknown model 'no-such-model-xyz'"):
        load_recipe(_recipe(tmp_path, {"coldstart": {}}, model="no-such-model-xyz"))
    with pytest.raises(ValueError, match=r"stages.coldstart.judge: unknown model 'nope'"):
        load_recipe(_recipe(tmp_path, {"coldstart": {"judge": "local:nope"}}))
    # a model an earlier stage writes is not checked before it exists
    _, stages = load_recipe(_recipe(tmp_path, {"sft": {}, "eval": {}}))
    assert stages[1].config.model == str(tmp_path / "run" / "sft")


def test_a_string_for_a_list_option_is_one_item(tmp_path):
    _, stages = load_recipe(_recipe(tmp_path, {"eval": {"suites": "arithmetic:1"}}))
    assert stages[0].config.suites == ["arithmetic:1"]
