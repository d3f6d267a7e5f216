"""Depth upscaling (KAT-V1 §2): find saturated layers, duplicate them, keep the function.

Layer saturation = mean cosine similarity between a decoder layer's input and output hidden
states over the non-padding tokens of a calibration set; a layer near 1 barely changes the
residual stream. `upscale` duplicates the most saturated layers (each copy right after its
original) until the target depth. With `zero_init` the copy's output projections (attention
`o_proj`, MLP `down_proj`) are zeroed, so the copy adds nothing to the residual stream and the
upscaled model computes exactly the original function at step 0.

The result is a plain Hugging Face model of the same class: `save_pretrained` it and
`AutoModelForCausalLM.from_pretrained` loads it without custom code.

`autothink upscale` (`UpscaleConfig`, `run_upscale`) does the whole job on the command line:
saturation on a calibration set (built-in texts, or a text/JSONL file), duplication, and an
output dir with the model and tokenizer, `saturation.json`, `saturation.png` and `upscale.json`.

>>> # sat = layer_saturation(model, tokenizer, texts)
>>> # upscale(model, sat, target_layers=40); model.save_pretrained(out); tokenizer.save_pretrained(out)
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from autothink.models.loading import load_model, resolve
from autothink.records.jsonl import RecordError, read_jsonl
from autothink.records.messages import message_text

# model_type of the configs whose decoder layers, per-layer config fields and output
# projections this module knows.
SUPPORTED = ("llama", "qwen2", "qwen3", "gemma3_text")
_OUTPUT_PROJECTIONS = ("self_attn.o_proj", "mlp.down_proj")


def _layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a supported model; ValueError naming the architecture otherwise."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if model_type not in SUPPORTED or not isinstance(layers, nn.ModuleList):
        arch = ", ".join(getattr(config, "architectures", None) or [type(model).__name__])
        raise ValueError(
            f"depth upscaling supports Llama-, Qwen2-, Qwen3- and Gemma3-style causal LMs "
            f"(model_type {', '.join(SUPPORTED)} with `model.model.layers`); got {arch} (model_type {model_type!r})"
        )
    return layers


# --------------------------------------------------------------------------- saturation


@torch.no_grad()
def layer_saturation(
    model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 8, max_length: int = 512
) -> list[float]:
    """Mean cosine similarity between each decoder layer's input and output, per layer.

    Forward hooks read each layer's input and output (not `output_hidden_states`, whose last
    entry has the final norm applied in many HF models). The mean is over every non-padding
    token of `texts`.

    Args:
        model: a supported causal LM. tokenizer: its tokenizer (needs a pad token for batches).
        texts: calibration texts. batch_size, max_length: tokenization batch and truncation.

    Returns:
        One value in [-1, 1] per layer, layer 0 first.

    Raises:
        ValueError: unsupported architecture, or no tokens in `texts`.
    """
    layers = _layers(model)
    n = model.config.num_hidden_layers
    sums = torch.zeros(n, dtype=torch.float64)
    count = 0
    current_mask: list[torch.Tensor] = []
    inputs: dict[int, torch.Tensor] = {}

    def pre_hook(i):
        def hook(module, args, kwargs):
            inputs[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    def post_hook(i):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(inputs.pop(i).double(), out.double(), dim=-1)  # (B, T)
            sums[i] += cos[current_mask[0]].sum().cpu()

        return hook

    handles = []
    for i, layer in enumerate(layers[:n]):
        handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post_hook(i), with_kwargs=True))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True,
                            truncation=True, max_length=max_length).to(device)
            current_mask[:] = [enc["attention_mask"].bool()]
            count += int(current_mask[0].sum())
            model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("layer_saturation: the calibration texts have no tokens")
    return (sums / count).tolist()


def saturation_table(
    model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 8, max_length: int = 512
) -> list[dict]:
    """`[{"layer": i, "saturation": s, "rank": r}, ...]` in layer order; rank 0 = most saturated."""
    sat = layer_saturation(model, tokenizer, texts, batch_size=batch_size, max_length=max_length)
    order = sorted(range(len(sat)), key=lambda i: (-sat[i], i))
    rank = {layer: r for r, layer in enumerate(order)}
    return [{"layer": i, "saturation": s, "rank": rank[i]} for i, s in enumerate(sat)]


def plot_saturation(table: Sequence[dict], path: str | Path, duplicated: Sequence[int] = (), title: str = "") -> Path:
    """Bar chart of saturation per layer (duplicated layers highlighted) written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [row["layer"] for row in table]
    values = [row["saturation"] for row in table]
    colors = ["tab:red" if layer in set(duplicated) else "tab:blue" for layer in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(layers)), 3.5))
    ax.bar(layers, values, color=colors)
    ax.set_xlabel("layer")
    ax.set_ylabel("cos(input, output)")
    low = min(values + [0.0])
    ax.set_ylim(min(low, 0.0) - 0.05 if low < 0 else max(0.0, min(values) - 0.05), 1.0)
    ax.set_title((title or "layer saturation") + (" (red: duplicated)" if duplicated else ""))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- upscaling


def target_depth(layers: int, target_layers: int | None = None, ratio: float | None = None) -> int:
    """Resolve `target_layers` or `ratio` (e.g. 1.25: 64 -> 80 layers) to a depth in (L, 2L]."""
    if (target_layers is None) == (ratio is None):
        raise ValueError("give exactly one of target_layers or ratio")
    target = target_layers if target_layers is not None else int(math.floor(layers * ratio + 0.5))
    if not layers < target <= 2 * layers:
        raise ValueError(
            f"target depth {target} must be more than the current {layers} layers and at most "
            f"{2 * layers} (each layer is duplicated at most once)"
        )
    return target


def plan_upscale(saturation: Sequence[float], target_layers: int) -> list[int]:
    """The layers to duplicate: the `target - L` most saturated (ties: lower index), sorted."""
    n = len(saturation)
    extra = target_depth(n, target_layers) - n
    order = sorted(range(n), key=lambda i: (-saturation[i], i))
    return sorted(order[:extra])


def _zero_output_projections(layer: nn.Module) -> None:
    for name in _OUTPUT_PROJECTIONS:
        try:
            proj = layer.get_submodule(name)
        except AttributeError:
            raise ValueError(f"zero_init: {type(layer).__name__} has no `{name}`") from None
        nn.init.zeros_(proj.weight)
        if getattr(proj, "bias", None) is not None:
            nn.init.zeros_(proj.bias)


@torch.no_grad()
def upscale(
    model: nn.Module,
    saturation: Sequence[float],
    target_layers: int | None = None,
    ratio: float | None = None,
    zero_init: bool = True,
) -> list[int]:
    """Duplicate the most saturated layers in place until the model has the target depth.

    Each copy is inserted right after its original. The config follows: `num_hidden_layers`,
    per-layer lists such as `layer_types` (the copy keeps its original's sliding/full type),
    `max_window_layers` (Qwen2/3); every attention module's `layer_idx` is renumbered so the KV
    cache indexes the new depth.

    Args:
        model: a Llama-, Qwen2-, Qwen3- or Gemma3-style causal LM (modified in place).
        saturation: per-layer saturation (`layer_saturation`), length = current depth.
        target_layers: the new depth, or `ratio`: new depth = round(L · ratio). One of the two.
        zero_init: zero each copy's `o_proj` and `down_proj`, so the function is unchanged.

    Returns:
        The original indices of the duplicated layers, ascending.

    Raises:
        ValueError: unsupported architecture (named), a saturation list of the wrong length, or
            a target depth not in (L, 2L].
    """
    layers = _layers(model)
    config = model.config
    n = config.num_hidden_layers
    if len(saturation) != n:
        raise ValueError(f"saturation has {len(saturation)} values but the model has {n} layers")
    target = target_depth(n, target_layers, ratio)
    duplicated = plan_upscale(saturation, target)
    origin: list[int] = []  # origin[j] = original index of new layer j
    new_layers: list[nn.Module] = []
    for i, layer in enumerate(layers[:n]):
        new_layers.append(layer)
        origin.append(i)
        if i in duplicated:
            twin = copy.deepcopy(layer)
            if zero_init:
                _zero_output_projections(twin)
            new_layers.append(twin)
            origin.append(i)
    for j, layer in enumerate(new_layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = j
    model.model.layers = nn.ModuleList(new_layers)
    # Per-layer config fields (`layer_types`, `no_rope_layers`, ...): a list named *layer* with
    # one entry per layer follows its layer.
    for key, value in list(vars(config).items()):
        if "layer" in key and isinstance(value, (list, tuple)) and len(value) == n and not key.startswith("_"):
            setattr(config, key, type(value)(value[i] for i in origin))
    mwl = getattr(config, "max_window_layers", None)
    if isinstance(mwl, int):  # Qwen2/3: layers below this index use full attention
        config.max_window_layers = sum(1 for i in origin if i < mwl)
    config.num_hidden_layers = len(new_layers)
    return duplicated


# --------------------------------------------------------------------------- the command

# Built-in calibration set: varied registers (prose, math, code, dialogue, lists, other scripts,
# the AutoThink format) so that no single kind of text decides which layers look saturated.
CALIBRATION_TEXTS = (
    "The river rose slowly through the night, and by morning the low fields along the valley were under water. "
    "Farmers moved their animals to the hills while the council argued about who should pay for the new levees.",
    "Solve for x: 3x + 7 = 22. Subtract 7 from both sides to get 3x = 15, then divide by 3, so x = 5. "
    "Check: 3 * 5 + 7 = 22, which is correct.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "print([fibonacci(i) for i in range(10)])",
    "User: Can you recommend a book about the history of mathematics?\nAssistant: Try 'Journey through Genius' "
    "by William Dunham; each chapter walks through one great theorem and the people behind it.",
    "Ingredients: 200 g flour, 2 eggs, 300 ml milk, a pinch of salt. Whisk the eggs and milk, sift in the flour, "
    "rest the batter for 30 minutes, then fry thin pancakes in a hot buttered pan.",
    "If every knight always tells the truth and every knave always lies, and A says 'B is a knave' while B says "
    "'we are both knights', then B must be a knave, so A told the truth and is a knight.",
    "La photosynthèse transforme l'énergie lumineuse en énergie chimique. Die Zellen der Pflanzen speichern sie "
    "als Zucker. 光合作用是植物获取能量的方式。",
    "SELECT customer_id, SUM(amount) AS total FROM orders WHERE created_at >= '2024-01-01' "
    "GROUP BY customer_id HAVING SUM(amount) > 1000 ORDER BY total DESC;",
    "<judge>Multi-step arithmetic benefits from explicit reasoning.</judge><think_on><think>17 * 24 = 17 * 20 + "
    "17 * 4 = 340 + 68 = 408.</think><answer>408</answer>",
    "<judge>A greeting needs no reasoning.</judge><think_off><answer>Hello! How can I help you today?</answer>",
    "The derivative of f(x) = x^3 sin(x) is f'(x) = 3x^2 sin(x) + x^3 cos(x) by the product rule; at x = 0 both "
    "terms vanish, so the tangent line there is horizontal.",
    "Release notes v2.3: fixed a crash when the config file was empty; the --verbose flag now prints timings; "
    "dropped support for Python 3.8.",
)


@dataclass
class UpscaleConfig:
    """`autothink upscale`: saturation analysis, then depth upscaling to a target depth."""

    model: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "embedded model name, model dir or hub id to upscale"})
    output_dir: str = field(default="runs/upscale", metadata={"help": "where the upscaled model and reports go"})
    target_layers: int | None = field(default=None, metadata={"help": "the new depth (in (L, 2L])"})
    ratio: float | None = field(default=None, metadata={"help": "new depth = round(L * ratio); default 1.25"})
    zero_init: bool = field(default=True, metadata={
        "help": "zero each copy's o_proj and down_proj so the upscaled model computes the original function"})
    calibration: str | None = field(default=None, metadata={
        "help": "calibration texts: a .jsonl file (field `text`, or stage-1/chat rows: `prompt`/`messages` and "
                "`completion`) or a text file (paragraphs separated by blank lines); default: built-in texts"})
    n_calibration: int | None = field(default=None, metadata={"help": "use only the first N calibration texts"})
    batch_size: int = field(default=8, metadata={"help": "calibration batch size"})
    max_length: int = field(default=512, metadata={"help": "calibration texts are truncated to this many tokens"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, mps"})
    dtype: str = field(default="float32", metadata={"help": "dtype the model is loaded and saved in"})


def calibration_texts(config: UpscaleConfig) -> tuple[list[str], str]:
    """The calibration texts and a description of where they came from.

    Raises:
        FileNotFoundError: no such file. RecordError: a JSONL row without usable text (named).
        ValueError: no texts at all.
    """
    if config.calibration is None:
        texts, source = list(CALIBRATION_TEXTS), "built-in"
    else:
        path = Path(config.calibration)
        if not path.exists():
            raise FileNotFoundError(f"calibration file {path} does not exist")
        source = str(path)
        if path.suffix == ".jsonl":
            texts = []
            for line, obj in read_jsonl(path):
                keys = [k for k in ("text", "prompt", "messages", "completion") if k in obj]
                if not keys:
                    raise RecordError(path, line, "no `text`, `prompt`, `messages` or `completion` field")
                try:
                    parts = [message_text(obj[k]) for k in (["text"] if "text" in obj else keys)]
                except ValueError as err:
                    raise RecordError(path, line, f"field {keys[0]!r}: {err}") from None
                texts.append("\n".join(parts))
        else:
            texts = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    texts = [t for t in texts if t.strip()][: config.n_calibration]
    if not texts:
        raise ValueError(f"no calibration texts in {source}")
    return texts, source


def run_upscale(config: UpscaleConfig) -> dict:
    """Measure saturation, duplicate the most saturated layers, write the upscaled checkpoint.

    Writes into `config.output_dir`: the model (`AutoModelForCausalLM.from_pretrained` loads it,
    no custom code) and its tokenizer, `saturation.json` (the per-layer table), `saturation.png`
    (duplicated layers in red) and, last, `upscale.json` (source, depths, duplicated layers, the
    original index of every new layer). A run whose `upscale.json` already records the same job
    is not repeated.

    Returns:
        The `upscale.json` record.

    Raises:
        ValueError: unsupported architecture, a bad target depth, no calibration texts.
    """
    out = Path(config.output_dir)
    job = {"source": config.model, "target_layers": config.target_layers, "ratio": config.ratio,
           "zero_init": config.zero_init, "calibration": config.calibration, "n_calibration": config.n_calibration}
    done = out / "upscale.json"
    if done.exists():
        record = json.loads(done.read_text())
        if record.get("job") == job:
            print(f"upscale: {out} already holds this job "
                  f"({record['layers_before']} -> {record['layers_after']} layers)")
            return record
    ratio = config.ratio if config.ratio is not None or config.target_layers is not None else 1.25
    texts, source = calibration_texts(config)
    model, tokenizer = load_model(config.model, device=config.device, dtype=config.dtype)
    before = model.config.num_hidden_layers
    target_depth(before, config.target_layers, ratio)  # fail before the calibration pass
    print(f"upscale: saturation of {before} layers on {len(texts)} calibration texts ({source})")
    table = saturation_table(model, tokenizer, texts, batch_size=config.batch_size, max_length=config.max_length)
    duplicated = upscale(model, [row["saturation"] for row in table], target_layers=config.target_layers,
                         ratio=ratio, zero_init=config.zero_init)
    origin = [i for i in range(before) for _ in range(2 if i in duplicated else 1)]
    out.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    calibration = {"source": source, "texts": len(texts), "max_length": config.max_length}
    (out / "saturation.json").write_text(json.dumps(
        {"model": config.model, "calibration": calibration,
         "layers": [{**row, "duplicated": row["layer"] in duplicated} for row in table]}, indent=2) + "\n")
    plot_saturation(table, out / "saturation.png", duplicated, title=f"{Path(resolve(config.model)).name} saturation")
    record = {"job": job, "source": config.model, "resolved": resolve(config.model),
              "architecture": type(model).__name__, "layers_before": before,
              "layers_after": model.config.num_hidden_layers, "duplicated": duplicated, "layer_origin": origin,
              "zero_init": config.zero_init, "calibration": calibration, "config": asdict(config)}
    done.write_text(json.dumps(record, indent=2) + "\n")
    print(f"upscale: {before} -> {record['layers_after']} layers, duplicated {duplicated} -> {out}")
    return record
