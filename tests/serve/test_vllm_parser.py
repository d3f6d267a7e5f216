"""The vLLM reasoning parser: the splitting alone (whole and token by token, on the real tokenizer),
and the parser class against vLLM 0.16's `ReasoningParser` interface (a stand-in module: vLLM needs
a GPU machine; the README says so)."""
import copy
import importlib
import sys
import types

import pydantic
import pytest

from autothink.format import add_autothink_tokens, render
from autothink.inference.respond import split_reasoning
from autothink.serve import vllm_parser
from autothink.serve.vllm_parser import AutoThinkSplit

REPLIES = [
    render("on", "x = 12", judge="Two steps of algebra.", think="3x = 36, so x = 12"),
    render("off", "Paris.", judge="A fact."),
    "<judge>cut short</judge><think_on><think>still thinking",  # a reply that hit max_tokens
    "no tags at all",
]


@pytest.fixture(scope="module")
def autothink_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    add_autothink_tokens(tok)
    return tok


@pytest.mark.parametrize("text", REPLIES)
def test_token_by_token_the_split_equals_the_whole_one(text, autothink_tokenizer):
    split = AutoThinkSplit(autothink_tokenizer.get_vocab())
    ids = autothink_tokenizer(text, add_special_tokens=False).input_ids
    pieces = [autothink_tokenizer.decode(ids[: i + 1]) for i in range(len(ids))]
    deltas = [b[len(a):] for a, b in zip([""] + pieces, pieces)]
    streamed = [split.feed(d) for d in deltas]
    reasoning, content = "".join(r for r, _ in streamed), "".join(c for _, c in streamed)
    tail = split.splitter.finish()
    assert (reasoning + tail[0], content + tail[1]) == split_reasoning(text)
    assert AutoThinkSplit.extract(text) == tuple(part or None for part in split_reasoning(text))


def test_reasoning_ends_at_the_answer_of_the_last_reply(autothink_tokenizer):
    split = AutoThinkSplit(autothink_tokenizer.get_vocab())
    encode = lambda text: autothink_tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    history = encode(REPLIES[1] + "user: and Rome?\n")
    assert split.reasoning_ended(encode(REPLIES[0])) and split.reasoning_ended(history)
    assert not split.reasoning_ended(history + encode("<judge>easy"))  # a new reply: its judge, no answer yet
    off = encode(REPLIES[1])
    assert autothink_tokenizer.decode(split.content_ids(off)) == "Paris.</answer>"
    assert split.content_ids(encode("<judge>x</judge><think_on><think>y")) == []
    with pytest.raises(RuntimeError, match="lacks the AutoThink tokens"):
        AutoThinkSplit({"a": 1})


@pytest.fixture
def vllm_interface(monkeypatch):
    """Stand-ins for the parts of vLLM 0.16 a reasoning parser touches (signatures as in vLLM's source)."""
    registry = {}

    class ReasoningParser:
        def __init__(self, tokenizer, *args, **kwargs):
            self.model_tokenizer = tokenizer

        @property
        def vocab(self):
            return self.model_tokenizer.get_vocab()

    class ReasoningParserManager:
        @classmethod
        def register_module(cls, name=None, force=True, module=None):
            def register(parser):
                registry[name] = parser
                return parser
            return register

    class DeltaMessage(pydantic.BaseModel):
        role: str | None = None
        content: str | None = None
        reasoning: str | None = None

    reasoning = types.ModuleType("vllm.reasoning")
    reasoning.ReasoningParser, reasoning.ReasoningParserManager = ReasoningParser, ReasoningParserManager
    protocol = types.ModuleType("vllm.entrypoints.openai.engine.protocol")
    protocol.DeltaMessage = DeltaMessage
    for name, module in {"vllm": types.ModuleType("vllm"), "vllm.reasoning": reasoning,
                         "vllm.entrypoints": types.ModuleType("vllm.entrypoints"),
                         "vllm.entrypoints.openai": types.ModuleType("vllm.entrypoints.openai"),
                         "vllm.entrypoints.openai.engine": types.ModuleType("vllm.entrypoints.openai.engine"),
                         "vllm.entrypoints.openai.engine.protocol": protocol}.items():
        monkeypatch.setitem(sys.modules, name, module)
    importlib.reload(vllm_parser)
    yield registry
    monkeypatch.undo()
    importlib.reload(vllm_parser)


def test_the_parser_class_vllm_loads(vllm_interface, autothink_tokenizer):
    parser = vllm_interface["autothink"](autothink_tokenizer)
    text = REPLIES[0]
    assert parser.extract_reasoning(text, request=None) == AutoThinkSplit.extract(text)
    ids = autothink_tokenizer(text, add_special_tokens=False).input_ids
    previous, messages = "", []
    for i in range(len(ids)):
        current = autothink_tokenizer.decode(ids[: i + 1])
        messages.append(parser.extract_reasoning_streaming(previous, current, current[len(previous):], ids[:i],
                                                           ids[: i + 1], ids[i: i + 1]))
        previous = current
    sent = [m for m in messages if m is not None]
    assert "".join(m.reasoning or "" for m in sent) == split_reasoning(text)[0]
    assert "".join(m.content or "" for m in sent) == "x = 12"
    assert parser.is_reasoning_end(ids) and parser.extract_content_ids(ids)
