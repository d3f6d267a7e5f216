"""The backend spec: one string names every LLM an autothink command can call.

    local:<model> | <model>           an embedded name, a model directory or a hub id (LocalBackend)
    http(s)://host:port[/v1][#model]  any OpenAI-compatible server (HTTPBackend)
    reference:<tasks.jsonl>           the tasks' own reference solutions (ReferenceBackend)
    llamacpp:<file.gguf | model>      llama.cpp on a GGUF file, or on a model exported to one (LlamaCppBackend)
"""
from __future__ import annotations

from autothink.inference.backend import Backend


def make_backend(spec: str, **options) -> Backend:
    """Build a backend from a string.

    - `"local:<model>"` or a bare `<model>` (embedded name, model directory, hub id) → `LocalBackend`;
      options go to `LocalBackend.from_pretrained` (`device`, `dtype`, `batch_size`, `speculative`).
    - `"http://host:port[/v1][#model-name]"` / `"https://..."` → `HTTPBackend`; options go to it.
    - `"reference:<tasks.jsonl>"` → `ReferenceBackend`: the tasks' own reference solutions.
    - `"llamacpp:<file.gguf>"` or `"llamacpp:<model>"` → `LlamaCppBackend` (a model is exported to
      GGUF once per checkpoint); options go to it (`batch_size`, `context`, `threads`, `tokenizer`);
      it runs on the CPU, so `device` may only be auto or cpu and `dtype` only auto.

    Raises:
        ValueError: the spec is empty or names nothing loadable.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"backend spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if local_model(spec) is None or spec.startswith("llamacpp:"):
        if options.pop("speculative", "auto") != "auto":
            raise ValueError(f"backend spec {spec!r}: --speculative applies to local models only")
    if spec.startswith("reference:"):
        from autothink.inference.reference import ReferenceBackend
        from autothink.tasks import load_tasks

        path = spec[len("reference:"):]
        if not path:
            raise ValueError("backend spec 'reference:' needs a tasks JSONL file, "
                             "e.g. 'reference:runs/data/tagged.jsonl'")
        return ReferenceBackend(load_tasks(path, ignore_extra=True), name=spec)
    if spec.startswith("llamacpp:"):
        from autothink.inference.llamacpp import LlamaCppBackend

        source = spec[len("llamacpp:"):]
        if not source:
            raise ValueError("backend spec 'llamacpp:' needs a GGUF file or a model, e.g. 'llamacpp:runs/rl'")
        if options.pop("device", "auto") not in ("auto", "cpu") or options.pop("dtype", "auto") != "auto":
            raise ValueError(f"backend spec {spec!r}: llama.cpp runs on the CPU in the GGUF's own tensor types; "
                             "use device auto/cpu and dtype auto")
        return LlamaCppBackend.from_spec(source, **options)
    if spec.startswith(("http://", "https://")):
        from autothink.inference.http import HTTPBackend

        url, _, model = spec.partition("#")
        if model and options.get("model") not in (None, model):
            raise ValueError(f"backend spec {spec!r} names model {model!r} but model={options['model']!r} was given")
        if model:
            options["model"] = model
        return HTTPBackend(url, **options)
    from autothink.inference.local import LocalBackend

    name = spec[len("local:"):] if spec.startswith("local:") else spec
    if not name:
        raise ValueError("backend spec 'local:' needs a model name or directory, e.g. 'local:smollm2-135m-instruct'")
    if "://" in name:
        raise ValueError(f"unknown backend spec {spec!r}: only http:// and https:// URLs are supported")
    from autothink.models import resolve

    try:
        resolve(name)
    except ValueError as err:
        raise ValueError(
            f"unknown backend spec {spec!r}: use 'local:<model name or dir>', 'llamacpp:<file.gguf or model>' "
            f"or an http(s):// URL ({err})"
        ) from None
    return LocalBackend.from_pretrained(name, **options)


def local_model(spec: str) -> str | None:
    """The model a spec names when it is a local one (`local:<model>`, a bare name, or
    `llamacpp:<model>` that is not a GGUF file), else None."""
    if spec.startswith("llamacpp:"):
        return None if spec.endswith(".gguf") else spec[len("llamacpp:"):]
    if spec.startswith(("http://", "https://", "reference:", "reference-agent")):
        return None
    return spec[len("local:"):] if spec.startswith("local:") else spec
