"""GGUF export with llama.cpp's converter, and LlamaCppBackend against LocalBackend on the same weights.

The tiny model is exported at f32 for the token-for-token comparisons (f16 rounds its random
weights); the embedded model's f16 round trip is measured in `benchmarks/bench_generation.py`.
"""
import json
import os

import pytest
from gguf import GGUFReader

from autothink.cli import main
from autothink.format import SPECIAL_TOKENS, install_chat_template
from autothink.inference.backend import SamplingParams
from autothink.inference.llamacpp import MIN_SHARED, LlamaCppBackend, _common_prefix
from autothink.inference.local import LocalBackend
from autothink.inference.spec import local_model, make_backend
from autothink.models.gguf import cached_gguf, export_gguf
from autothink.serve.app import create_app
from helpers import varied_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONVS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2? Answer with care."}],
    [{"role": "user", "content": "Tell me a story about a dragon who learned to count to ten."}],
    [{"role": "user", "content": "Write <think> and </answer> back to me."}],
]


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    """A tiny AutoThink model (tags added, `thinking` template) saved as a HF directory, with a model card."""
    model, tok = varied_tiny(tokenizer, autothink=True)
    install_chat_template(tok)
    path = tmp_path_factory.mktemp("tiny-autothink")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "README.md").write_text("---\nlibrary_name: transformers\ntags:\n- autothink\n---\n# tiny\n")
    return path, model, tok


@pytest.fixture(scope="module")
def f32_gguf(model_dir, tmp_path_factory):
    return export_gguf(str(model_dir[0]), tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", outtype="f32")


@pytest.fixture(scope="module")
def backends(model_dir, f32_gguf):
    _, model, tok = model_dir
    return LocalBackend(model, tok, name="hf"), LlamaCppBackend(f32_gguf, tok, batch_size=4, threads=1)


def test_greedy_equals_hf_token_for_token(backends):
    hf, llama = backends
    for thinking in (None, "auto", "on", "off"):
        params = SamplingParams(temperature=0, max_tokens=24)
        ours, theirs = llama.generate(CONVS, params, thinking), hf.generate(CONVS, params, thinking)
        assert [g[0].text for g in ours] == [g[0].text for g in theirs]
        assert [(g[0].tokens, g[0].prompt_tokens, g[0].finish_reason) for g in ours] == \
            [(g[0].tokens, g[0].prompt_tokens, g[0].finish_reason) for g in theirs]
    # More rows than the batch: the rows are split into batches and come back in order.
    params = SamplingParams(n=3, temperature=0, max_tokens=8)
    assert [[c.text for c in g] for g in llama.generate(CONVS, params)] == \
        [[c.text for c in g] for g in hf.generate(CONVS, params)]


def test_a_shared_prompt_prefix_is_computed_once_with_the_same_replies(backends):
    hf, llama = backends
    system = {"role": "system", "content": "You answer questions about numbers. " * 12}
    convs = [[system, *conv[-1:]] for conv in CONVS]
    assert _common_prefix(llama._encode(convs, None)) >= MIN_SHARED
    params = SamplingParams(temperature=0, max_tokens=16)
    assert llama.generate(convs, params) == hf.generate(convs, params)
    # Every row keeps at least its last token to feed; nothing is shared past the first difference.
    assert _common_prefix([[1, 2, 3], [1, 2, 3]]) == 2 and _common_prefix([[1, 2, 3], [1, 5, 3]]) == 1
    assert _common_prefix([[7], [7]]) == 0 and _common_prefix([[1, 2], [1, 2, 3]]) == 1


def test_sampling_follows_the_seed_like_the_local_backend(backends):
    hf, llama = backends
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_tokens=10, seed=7)
    first = llama.generate(CONVS[:2], params)
    assert first == llama.generate(CONVS[:2], params)  # seeded: reproducible
    assert len({c.text for c in first[0]}) == 3  # the n samples differ
    # Same logits and the same per-row generators: the same samples as LocalBackend.
    assert [[c.text for c in g] for g in first] == [[c.text for c in g] for g in hf.generate(CONVS[:2], params)]
    assert llama.generate(CONVS[:1], SamplingParams(n=2, max_tokens=10, seed=8)) != first[:1]


def test_stop_strings_prefix_stream_and_constrained(backends):
    hf, llama = backends
    free = llama.generate(CONVS[2:3], SamplingParams(temperature=0, max_tokens=20))[0][0].text
    stop = free[5:8]
    params = SamplingParams(temperature=0, max_tokens=20, stop=(stop,))
    ours, theirs = llama.generate(CONVS, params), hf.generate(CONVS, params)
    assert ours == theirs and ours[2][0].text == free[:free.index(stop)] and ours[2][0].stop_reason == stop
    assert ours[2][0].finish_reason == "stop" and ours[2][0].tokens < 20
    prefix = "<judge>easy</judge><think_off><answer>"
    params = SamplingParams(temperature=0, max_tokens=12)
    assert llama.generate(CONVS, params, prefix=prefix) == hf.generate(CONVS, params, prefix=prefix)
    pieces = list(llama.stream(CONVS[1], params, thinking="on"))
    whole = llama.generate([CONVS[1]], params, thinking="on")[0][0]
    assert pieces[-1] == whole and "".join(pieces[:-1]) == whole.text and len(pieces) > 2
    params = SamplingParams(n=2, temperature=1.0, max_tokens=16, seed=3, constrained=True)
    assert llama.generate(CONVS, params, "auto") == hf.generate(CONVS, params, "auto")


def test_each_row_has_its_own_context_budget(model_dir, f32_gguf):
    small = LlamaCppBackend(f32_gguf, model_dir[2], batch_size=4, context=64, threads=1)
    long_conv = [{"role": "user", "content": "one two three four five six seven eight nine ten " * 2}]
    assert 40 < small.prompt_tokens(long_conv) < 64
    params = SamplingParams(temperature=0, max_tokens=40)
    together = small.generate([long_conv, CONVS[0]], params)
    assert together[0][0].tokens == 64 - small.prompt_tokens(long_conv) and together[0][0].finish_reason == "length"
    assert together[1] == small.generate([CONVS[0]], params)[0]  # the short row is not cut to the long one's room
    with pytest.raises(ValueError, match="batch_size must be 1 to 256"):
        LlamaCppBackend(f32_gguf, model_dir[2], batch_size=300)
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        LlamaCppBackend(f32_gguf, model_dir[2], threads=0)


def test_cancel_and_length(backends):
    _, llama = backends
    out = llama.generate(CONVS[:1], SamplingParams(temperature=0, max_tokens=5))[0][0]
    assert out.finish_reason == "length" and out.tokens == 5
    cancelled = llama.generate(CONVS[:1], SamplingParams(temperature=0, max_tokens=50), cancel=lambda: True)[0][0]
    assert cancelled.finish_reason == "length" and cancelled.tokens == 1


def test_the_gguf_keeps_tags_template_and_card(model_dir, f32_gguf, backends):
    _, _, tok = model_dir
    _, llama = backends
    for tag in SPECIAL_TOKENS:  # one id each, the HF tokenizer's
        ids = llama._tokenize(tag)
        assert ids == tok(tag, add_special_tokens=False)["input_ids"] and len(ids) == 1
    fields = GGUFReader(f32_gguf).fields
    text = lambda key: bytes(fields[key].parts[fields[key].data[0]]).decode()  # noqa: E731
    assert "thinking" in text("tokenizer.chat_template")
    assert "autothink" in text("general.tags")
    # `llamacpp:<file.gguf>` builds its tokenizer from the GGUF: the same prompts, the same replies.
    alone = make_backend(f"llamacpp:{f32_gguf}", batch_size=2, threads=1)
    for thinking in ("off", "on", "auto"):
        assert alone.render(CONVS[1], thinking) == llama.render(CONVS[1], thinking)
    # Without a generation config it stops at llama.cpp's end-of-generation tokens of the file too.
    assert set(llama.eos_ids) < set(alone.eos_ids) and tok.convert_tokens_to_ids("<|endoftext|>") in alone.eos_ids
    params = SamplingParams(temperature=0, max_tokens=12)
    theirs = llama.generate(CONVS, params, "off")
    for ours, reference in zip(alone.generate(CONVS, params, "off"), theirs):
        assert reference[0].text.startswith(ours[0].text)


def test_quantised_exports_load_and_the_cli(model_dir, tmp_path, capsys):
    path = model_dir[0]
    assert main(["export", "gguf", "--model", str(path), "--outtype", "q8_0", "-o", str(tmp_path / "q8.gguf")]) == 0
    assert "export gguf: output=" in capsys.readouterr().out
    q4 = export_gguf(str(path), tmp_path / "q4.gguf", outtype="q4_k_m")
    sizes = {p.name: p.stat().st_size for p in tmp_path.glob("*.gguf")}
    assert sizes["q4.gguf"] < sizes["q8.gguf"]
    for gguf in (tmp_path / "q8.gguf", q4):
        out = LlamaCppBackend(gguf, model_dir[2], batch_size=2, threads=1).generate(
            CONVS[:2], SamplingParams(temperature=0, max_tokens=6))
        assert all(g[0].tokens == 6 for g in out)
    with pytest.raises(SystemExit):
        main(["export", "gguf", "--model", str(path), "--outtype", "q2", "-o", str(tmp_path / "x.gguf")])
    assert main(["export", "gguf", "--model", str(tmp_path), "-o", str(tmp_path / "x.gguf")]) == 2  # no config.json
    assert "has no config.json" in capsys.readouterr().err and not (tmp_path / "x.gguf").exists()


def test_a_model_dir_is_exported_once_per_checkpoint(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTHINK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LLAMA_CPP_DIR", str(_converter_dir()))  # the shared converter, not a second fetch
    path = model_dir[0]
    first = cached_gguf(str(path))
    stamp = first.stat().st_mtime_ns
    assert cached_gguf(str(path)) == first and first.stat().st_mtime_ns == stamp
    backend = make_backend(f"llamacpp:{path}", batch_size=2, threads=1)
    assert backend.generate(CONVS[:1], SamplingParams(temperature=0, max_tokens=4))[0][0].tokens == 4
    assert local_model(f"llamacpp:{path}") == str(path) and local_model("llamacpp:x.gguf") is None
    card = path / "README.md"
    card.write_text(card.read_text() + "\nretrained\n")  # a changed checkpoint is exported again
    os.utime(card, ns=(stamp + 10**9, stamp + 10**9))
    second = cached_gguf(str(path))
    assert second != first and second.is_file() and not first.exists()  # the stale export is gone
    second.unlink()


def _converter_dir():
    from autothink.models.gguf import converter

    return converter()


def test_bad_inputs_are_named(model_dir, backends, tokenizer, tmp_path):
    _, _, tok = model_dir
    _, llama = backends
    bogus = tmp_path / "bogus.gguf"
    bogus.write_text("not a model")
    with pytest.raises(ValueError, match="could not load"):
        LlamaCppBackend(bogus, tok)
    with pytest.raises(ValueError, match="does not exist"):
        make_backend(f"llamacpp:{tmp_path / 'missing.gguf'}")
    with pytest.raises(ValueError, match="runs on the CPU"):
        make_backend("llamacpp:x.gguf", device="cuda")
    with pytest.raises(ValueError, match="needs a GGUF file or a model"):
        make_backend("llamacpp:")
    with pytest.raises(ValueError, match="prompts must have 1 to"):
        llama.generate([[{"role": "user", "content": "word " * 3000}]], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="does not match the tokenizer"):  # no AutoThink tokens in this one
        LlamaCppBackend(export_gguf(str(model_dir[0]), tmp_path / "t.gguf", "q8_0"), tokenizer)
    with pytest.raises(ValueError, match="unknown outtype"):
        export_gguf(str(model_dir[0]), tmp_path / "t.gguf", "q3")


def test_served_by_autothink_serve(backends):
    from starlette.testclient import TestClient

    hf, llama = backends
    request = {"model": "x", "messages": CONVS[1], "max_tokens": 10, "temperature": 0}
    replies = []
    for backend in (llama, hf):
        with TestClient(create_app(backend, model_name="x")) as client:
            reply = client.post("/v1/chat/completions", json=request)
            assert reply.status_code == 200, reply.text
            replies.append(json.dumps(reply.json()["choices"]))
    assert replies[0] == replies[1]


def test_eval_and_generate_run_on_it_like_on_the_local_backend(backends, f32_gguf, tmp_path, capsys):
    from dataclasses import replace

    from autothink.eval.run import EvalConfig, run_eval

    hf, llama = backends
    config = EvalConfig(model="tiny", suites=["arithmetic:1"], n=3, max_tokens=12, forced_judge="empty",
                        output_dir=str(tmp_path / "hf"))
    ours = run_eval(replace(config, output_dir=str(tmp_path / "llama")), backend=llama)
    assert ours["all"] == run_eval(config, backend=hf)["all"] and ours["samples"] == 9
    samples = [(tmp_path / d / "samples.jsonl").read_text() for d in ("hf", "llama")]
    assert samples[0] == samples[1]
    capsys.readouterr()
    assert main(["generate", "--model", f"llamacpp:{f32_gguf}", "What is 2+2?", "--max_tokens", "6",
                 "--thinking", "off", "--forced_judge", "empty"]) == 0
    reply = json.loads(capsys.readouterr().out.splitlines()[0])
    assert reply["mode"] == "off" and reply["thinking"] == "off" and reply["tokens"]["completion"] >= 1
