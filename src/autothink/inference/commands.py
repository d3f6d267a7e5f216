"""`autothink generate` and `autothink chat`: replies from the command line, over any backend.

    autothink generate "What is 17*23?" "Name a color. DO NOT THINK" --thinking auto --thinking_budget 128
    autothink generate --input prompts.jsonl -o replies.jsonl --thinking on
    autothink chat --model runs/rl      # /mode auto|on|off, /budget N|off, /reset, /quit
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from tqdm import tqdm

from autothink.format import THINKING, install_chat_template
from autothink.inference.backend import Backend, Conversation, SamplingParams
from autothink.inference.respond import ControlOptions, Reply, check_controls, respond, respond_stream
from autothink.inference.spec import make_backend
from autothink.inference.speculative import speculative_field
from autothink.records.jsonl import RecordError, read_jsonl, write_jsonl
from autothink.records.messages import as_messages


@dataclass
class ReplyOptions(ControlOptions):
    """How to reply: the model, the mode control and the sampling settings."""

    model: str = field(default="smollm2-135m-instruct", metadata={
        "help": "embedded name, model dir, hub id or http://host:port/v1#model"})
    thinking: str = field(default="auto", metadata={
        "help": "auto: the model decides; on/off: forced after the model's judge",
        "choices": list(THINKING)})
    thinking_budget: int | None = field(default=None, metadata={"help": "force </think><answer> after N think tokens"})
    max_tokens: int = field(default=512, metadata={"help": "generated tokens per reply, all segments"})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    seed: int | None = field(default=None, metadata={"help": "sampling seed"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, mps (local models)"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16 (local models)"})
    speculative: str = speculative_field()

    def params(self, n: int = 1) -> SamplingParams:
        return SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              seed=self.seed, constrained=self.constrained)

    def backend(self) -> Backend:
        """The backend of `model`; a local model gets the `thinking` chat template."""
        local = not self.model.startswith(("http://", "https://"))
        backend = make_backend(self.model, speculative=self.speculative,
                               **({"device": self.device, "dtype": self.dtype} if local else {}))
        if local:
            install_chat_template(backend.tokenizer)
        return backend


@dataclass
class GenerateConfig(ReplyOptions):
    """`autothink generate`: one JSON line per reply (text, judge/mode/think/answer, control, tokens)."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("prompts",)
    prompts: list[str] = field(default_factory=list, metadata={
        "help": "prompts, each one user message"})
    input: str | None = field(default=None, metadata={
        "help": 'JSONL file of {"prompt": ...} or {"messages": [...]} objects (+ "id")'})
    output: str | None = field(default=None, metadata={
        "help": "write the JSONL replies here (default: stdout)", "aliases": ["-o"]})
    n: int = field(default=1, metadata={"help": "replies per prompt"})
    batch_size: int = field(default=16, metadata={"help": "prompts per respond call"})


@dataclass
class ChatConfig(ReplyOptions):
    """`autothink chat`: a multi-turn chat on stdin and stdout."""


def read_conversations(path) -> list[tuple[str, Conversation]]:
    """`(id, conversation)` per line of a JSONL file of `{"prompt": str}` or `{"messages": [...]}`
    objects (`id` optional: the line number).

    Raises:
        RecordError: a line that is not JSON, or a missing or malformed field (file and line named).
    """
    out = []
    for line, record in read_jsonl(path):
        try:
            if "messages" in record:
                conversation = as_messages(record["messages"], roles=("system", "user", "assistant"))
            elif "prompt" in record:
                conversation = as_messages(record["prompt"], "prompt", string_role="user")
            else:
                raise ValueError("missing field 'prompt' (a string) or 'messages'")
        except ValueError as err:
            raise RecordError(path, line, str(err)) from None
        out.append((str(record.get("id", line)), conversation))
    return out


CHAT_HELP = "commands: /mode auto|on|off, /budget N|off, /reset, /quit"


def chat(backend: Backend, params: SamplingParams, lines, write, thinking: str = "auto",
         thinking_budget: int | None = None, force_directives: bool = False,
         forced_judge: str = "model") -> list[Reply]:
    """A multi-turn chat: each line of `lines` is a user turn or a command (`CHAT_HELP`).

    Replies are written through `write` as they are generated (the raw AutoThink text), each
    followed by a line with its mode and token counts. The history keeps each reply's answer
    (the whole text when it has none), not its reasoning. Returns the replies.
    """
    check_controls(params, thinking, thinking_budget, forced_judge)
    history: list[dict] = []
    replies: list[Reply] = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, arg = line.partition(" ")
            arg = arg.strip()
            if command == "/quit":
                break
            if command == "/reset":
                history.clear()
                write("(conversation cleared)\n")
            elif command == "/mode" and arg in THINKING:
                thinking = arg
                write(f"(thinking: {thinking})\n")
            elif command == "/budget" and (arg == "off" or arg.isdigit() and int(arg) >= 1):
                thinking_budget = None if arg == "off" else int(arg)
                write(f"(thinking budget: {thinking_budget or 'none'})\n")
            else:
                write(f"(unknown command or argument: {line!r}; {CHAT_HELP})\n")
            continue
        history.append({"role": "user", "content": line})
        for item in respond_stream(backend, history, params, thinking, thinking_budget, force_directives,
                                   forced_judge):
            if isinstance(item, str):
                write(item)
        reply = item
        replies.append(reply)
        history.append({"role": "assistant", "content": reply.parts.answer if reply.parts.answer is not None
                        else reply.text})
        forced = ", forced by a directive" if thinking == "auto" and reply.thinking != "auto" else ""
        write(f"\n[mode {reply.mode or '?'} (thinking {reply.thinking}{forced}) | judge {reply.judge_tokens}, "
              f"think {reply.think_tokens}, answer {reply.answer_tokens} tokens"
              f"{', budget hit' if reply.budget_hit else ''} | {reply.finish_reason}]\n")
    return replies


def run_generate(config: GenerateConfig) -> None:
    """Reply to every prompt; write the JSON lines to `config.output` or stdout."""
    items = [(str(i), [{"role": "user", "content": p}]) for i, p in enumerate(config.prompts, start=1)]
    items += read_conversations(config.input) if config.input else []
    if not items:
        raise ValueError("no prompts: give them as arguments or in --input FILE.jsonl")
    if config.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {config.batch_size}")
    params = config.params(config.n)  # bad values fail before the model loads
    backend = config.backend()
    records = []
    with tqdm(total=len(items), unit="prompt", disable=len(items) <= config.batch_size, file=sys.stderr) as bar:
        for start in range(0, len(items), config.batch_size):
            chunk = items[start:start + config.batch_size]
            replies = respond(backend, [c for _, c in chunk], params, config.thinking, config.thinking_budget,
                              config.force_directives, config.forced_judge)
            records += [{"id": id_, "sample": k, **r.to_dict()} for (id_, _), group in zip(chunk, replies)
                        for k, r in enumerate(group)]
            bar.update(len(chunk))
    if config.output:
        print(f"wrote {write_jsonl(config.output, records)} replies to {config.output}")
    else:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))


def run_chat(config: ChatConfig) -> None:
    """Chat on stdin/stdout (a prompt `> ` when stdin is a terminal)."""
    params = config.params()
    backend = config.backend()
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {backend.name}; {CHAT_HELP}")

    def lines():
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                return
            yield line

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    chat(backend, params, lines(), write, config.thinking, config.thinking_budget, config.force_directives,
         config.forced_judge)
