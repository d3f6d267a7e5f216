"""`autothink export gguf`: a model as one GGUF file, for llama.cpp, Ollama, LM Studio and the
`llamacpp:` backend.

    autothink export gguf --model runs/rl --outtype q8_0 -o rl.gguf

The conversion is llama.cpp's own `convert_hf_to_gguf.py`, run with the `gguf-py` of the same
llama.cpp tree (ahead of PyPI's `gguf` of the same version number): it maps each architecture's
tensors and writes the tokenizer, the added AutoThink tokens (single user-defined tokens, never
split), the chat template with its `thinking` variable, and the model card's metadata. The
converter is not on PyPI by itself but ships in the llama-cpp-python sdist, so the first export
takes it from the sdist of the installed llama-cpp-python version (`pip download`, once, cached):
the same llama.cpp that loads the file. `q4_k_m` quantises the f16 file with llama.cpp's
quantiser (`llama_model_quantize`).
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from autothink.models.loading import cache_dir, cache_lock, resolve

CONVERTER_OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # written by convert_hf_to_gguf.py itself
QUANTIZED_OUTTYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # llama.cpp file types, quantised from f16
OUTTYPES = CONVERTER_OUTTYPES + tuple(QUANTIZED_OUTTYPES)
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def llama_cpp_version() -> str:
    """The installed llama-cpp-python version (the llama.cpp the converter must match)."""
    try:
        import llama_cpp
    except ImportError:
        raise RuntimeError("GGUF export and the llamacpp backend need llama-cpp-python: "
                           "pip install 'autothink[llamacpp]' (it compiles llama.cpp, ~5-7 min)") from None
    return llama_cpp.__version__


def converter(llama_cpp_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding llama.cpp's `convert_hf_to_gguf.py`, its `conversion/` package and `gguf-py/`.

    `llama_cpp_dir` (or `$LLAMA_CPP_DIR`) names a llama.cpp checkout to use; otherwise the files
    come from the installed llama-cpp-python's sdist, extracted once into the cache.

    Raises:
        RuntimeError: no converter in the given directory, or the sdist could not be fetched.
    """
    given = llama_cpp_dir or os.environ.get("LLAMA_CPP_DIR")
    if given:
        path = Path(given).expanduser()
        if not (path / "convert_hf_to_gguf.py").is_file():
            raise RuntimeError(f"{path} holds no convert_hf_to_gguf.py (expected a llama.cpp checkout)")
        return path
    version = llama_cpp_version()
    target = cache_dir() / "llama.cpp" / version
    with cache_lock(f"llama.cpp-{version}"):
        if not (target / "convert_hf_to_gguf.py").is_file():
            _extract_converter(version, target)
    return target


def _extract_converter(version: str, target: Path) -> None:
    """Fetch the llama-cpp-python `version` sdist from the package index and keep only the converter."""
    with tempfile.TemporaryDirectory() as tmp:
        print(f"fetching llama.cpp's converter: the llama-cpp-python=={version} sdist (once)", file=sys.stderr)
        fetched = subprocess.run(  # only this package as an sdist: its build requirements come as wheels
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "llama-cpp-python",
             f"llama-cpp-python=={version}", "-d", tmp], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if fetched.returncode or not sdists:
            raise RuntimeError(f"could not fetch the llama-cpp-python=={version} sdist for its GGUF converter "
                               f"({fetched.stderr.strip()[-500:]}); set LLAMA_CPP_DIR to a llama.cpp checkout")
        staged = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=_parent(target)))
        try:
            with tarfile.open(sdists[0]) as sdist:
                root = f"{sdist.getnames()[0].split('/')[0]}/vendor/llama.cpp/"
                members = [m for m in sdist.getmembers() if m.name.startswith(root) and ".." not in m.name
                           and m.name[len(root):].startswith(_CONVERTER_FILES) and (m.isfile() or m.isdir())]
                for member in members:
                    member.name = member.name[len(root):]
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
                sdist.extractall(staged, members=members, **safe)
            if not (staged / "convert_hf_to_gguf.py").is_file():
                raise RuntimeError(f"the llama-cpp-python=={version} sdist has no "
                                   "vendor/llama.cpp/convert_hf_to_gguf.py")
            if target.exists():
                shutil.rmtree(target)
            staged.rename(target)
        finally:
            shutil.rmtree(staged, ignore_errors=True)  # gone already once renamed


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def export_gguf(model: str, output: str | os.PathLike, outtype: str = "f16",
                llama_cpp_dir: str | os.PathLike | None = None) -> Path:
    """Write `model` (an embedded name or a model directory) as a GGUF file at `output`.

    The file appears whole or not at all (written beside it, then renamed).

    Raises:
        ValueError: an unknown outtype, or a model that is not a local directory.
        RuntimeError: the converter or the quantiser failed (its last output lines are in the message).
    """
    if outtype not in OUTTYPES:
        raise ValueError(f"unknown outtype {outtype!r}; one of {', '.join(OUTTYPES)}")
    source = Path(resolve(model))
    if not source.is_dir():
        raise ValueError(f"export needs a local model directory or an embedded model, got hub id {model!r}")
    output = Path(output)
    script = converter(llama_cpp_dir) / "convert_hf_to_gguf.py"
    with tempfile.TemporaryDirectory(prefix=f".{output.name}-", dir=_parent(output)) as tmp:
        first = Path(tmp) / "model.gguf"
        ran = subprocess.run(
            [sys.executable, str(script), str(source), "--outfile", str(first),
             "--outtype", "f16" if outtype in QUANTIZED_OUTTYPES else outtype],
            capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(script.parent / "gguf-py"), str(script.parent)])})
        if ran.returncode or not first.is_file():
            tail = "\n".join((ran.stdout + ran.stderr).strip().splitlines()[-12:])
            raise RuntimeError(f"convert_hf_to_gguf.py could not convert {source}:\n{tail}")
        if outtype in QUANTIZED_OUTTYPES:
            quantized = Path(tmp) / "quantized.gguf"
            _quantize(first, quantized, QUANTIZED_OUTTYPES[outtype])
            first = quantized
        first.rename(output)
    return output


def _quantize(source: Path, target: Path, ftype: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    params.nthread = len(os.sched_getaffinity(0))
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantise {source}")


def cached_gguf(model: str, outtype: str = "f16") -> Path:
    """The GGUF of `model`, exported once per checkpoint: files are keyed by the model's path and
    files (names, sizes, modification times) and the converter's version, so a retrained
    checkpoint is exported again and replaces the export of the checkpoint it overwrote."""
    source = Path(resolve(model))
    if not source.is_dir():
        raise ValueError(f"the llamacpp backend needs a .gguf file, a model directory or an embedded model, "
                         f"got {model!r}")
    place = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:8]
    content = hashlib.sha256(llama_cpp_version().encode())  # a new converter exports again
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        stat = path.stat()
        content.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    folder = cache_dir() / "gguf" / "exports"
    target = folder / f"{source.name}-{place}-{content.hexdigest()[:8]}-{outtype}.gguf"
    with cache_lock(f"export-{source.name}-{place}"):
        if not target.is_file():
            print(f"exporting {model} to GGUF ({outtype}, once per checkpoint): {target}", file=sys.stderr)
            export_gguf(model, target, outtype)
            for stale in folder.glob(f"{glob.escape(source.name)}-{place}-*-{outtype}.gguf"):
                if stale != target:
                    stale.unlink()
    return target


@dataclass
class ExportConfig:
    """`autothink export gguf`: a model as a GGUF file for llama.cpp, Ollama and LM Studio."""

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "embedded name or model dir"})
    output: str = field(default="model.gguf", metadata={"help": "the GGUF file to write", "aliases": ["-o"]})
    outtype: str = field(default="f16", metadata={"help": "tensor type", "choices": list(OUTTYPES)})
    llama_cpp_dir: str | None = field(default=None, metadata={
        "help": "a llama.cpp checkout whose converter to use (default: the installed llama-cpp-python's)"})


def run_export(config: ExportConfig) -> dict:
    path = export_gguf(config.model, config.output, config.outtype, config.llama_cpp_dir)
    return {"output": str(path), "outtype": config.outtype, "mb": round(path.stat().st_size / 2**20, 1)}
