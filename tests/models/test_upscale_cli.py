"""`autothink upscale` end to end on a tiny model: outputs, a plain HF checkpoint, the same function."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from autothink.cli import main
from autothink.models import tiny_model
from autothink.models.upscale import CALIBRATION_TEXTS, UpscaleConfig, calibration_texts

PROBE = ["Solve 3x + 5 = 20.", "The quick brown fox jumps over the lazy dog."]


@pytest.fixture(scope="module")
def source(tmp_path_factory, tokenizer):
    """A 4-layer tiny Llama saved as an ordinary checkpoint dir; layer 2 made nearly the identity."""
    model, _ = tiny_model(tokenizer, layers=4, seed=1)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.mul_(1e-3)
        model.model.layers[2].mlp.down_proj.weight.mul_(1e-3)
    path = tmp_path_factory.mktemp("source")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


def logits(model, tokenizer):
    enc = tokenizer(PROBE, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def test_upscale_command_writes_a_plain_checkpoint_with_the_same_function(source, tokenizer, tmp_path, capsys):
    path, original = source
    out = tmp_path / "up"
    assert main(["upscale", "--model", str(path), "--output_dir", str(out), "--target_layers", "5"]) == 0
    assert "4 -> 5 layers" in capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "tokenizer.json", "saturation.json", "saturation.png",
                 "upscale.json"):
        assert (out / name).exists(), name
    assert (out / "saturation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads((out / "saturation.json").read_text())["layers"]
    record = json.loads((out / "upscale.json").read_text())
    assert [row["layer"] for row in table] == [0, 1, 2, 3]
    # the near-identity layer is the most saturated, so it is the one duplicated, right after itself
    assert max(table, key=lambda row: row["saturation"])["layer"] == 2
    assert record["duplicated"] == [2] and record["layer_origin"] == [0, 1, 2, 2, 3]
    assert (record["layers_before"], record["layers_after"], record["zero_init"]) == (4, 5, True)
    assert record["calibration"]["source"] == "built-in" and record["calibration"]["texts"] == len(CALIBRATION_TEXTS)

    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(loaded) is type(original) and loaded.config.num_hidden_layers == 5 and len(loaded.model.layers) == 5
    loaded_tok = AutoTokenizer.from_pretrained(out)
    assert loaded_tok("hello world").input_ids == tokenizer("hello world").input_ids
    torch.testing.assert_close(logits(loaded, tokenizer), logits(original, tokenizer), atol=1e-5, rtol=0)
    # the copy's output projections are zero; its other weights equal the original layer's
    copy_layer = loaded.model.layers[3]
    assert torch.count_nonzero(copy_layer.self_attn.o_proj.weight) == 0
    assert torch.count_nonzero(copy_layer.mlp.down_proj.weight) == 0
    assert torch.equal(copy_layer.self_attn.q_proj.weight, original.model.layers[2].self_attn.q_proj.weight)

    # the same job again is not repeated (the checkpoint is left as it was)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["upscale", "--model", str(path), "--output_dir", str(out), "--target_layers", "5"]) == 0
    assert "already holds this job" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_default_ratio_yaml_config_and_no_zero_init(source, tokenizer, tmp_path):
    path, original = source
    out = tmp_path / "up"
    cfg = tmp_path / "upscale.yaml"
    cfg.write_text(f"model: {path}\noutput_dir: {out}\nzero_init: false\n")
    assert main(["upscale", "--config", str(cfg)]) == 0
    record = json.loads((out / "upscale.json").read_text())
    assert record["layers_after"] == 5 and record["zero_init"] is False  # 4 * 1.25
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not torch.allclose(logits(loaded, tokenizer), logits(original, tokenizer), atol=1e-4)


def test_calibration_files(tmp_path):
    rows = tmp_path / "stage1.jsonl"
    rows.write_text(
        json.dumps({"id": "a", "prompt": [{"role": "user", "content": "2+2?"}],
                    "completion": [{"role": "assistant", "content": "<think_off><answer>4</answer>"}]}) + "\n"
        + json.dumps({"text": "plain text row"}) + "\n"
    )
    texts, source = calibration_texts(UpscaleConfig(calibration=str(rows)))
    assert texts == ["2+2?\n<think_off><answer>4</answer>", "plain text row"] and source == str(rows)
    prose = tmp_path / "calib.txt"
    prose.write_text("first paragraph\nstill first\n\n\nsecond\n")
    assert calibration_texts(UpscaleConfig(calibration=str(prose),
                                           n_calibration=1))[0] == ["first paragraph\nstill first"]


def test_bad_calibration_row_and_bad_target_are_named(source, tmp_path, capsys):
    path, _ = source
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"id": 3, "answer": "x"}) + "\n")
    assert main(["upscale", "--model", str(path), "--output_dir", str(tmp_path / "o"), "--calibration", str(bad)]) == 2
    assert f"{bad}:2: no `text`" in capsys.readouterr().err
    assert main(["upscale", "--model", str(path), "--output_dir", str(tmp_path / "o"), "--target_layers", "9"]) == 2
    assert "at most 8" in capsys.readouterr().err
    assert not (tmp_path / "o" / "upscale.json").exists()
