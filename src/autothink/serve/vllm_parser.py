"""A vLLM reasoning parser for AutoThink replies: `vllm serve MODEL --reasoning-parser autothink`.

    PLUGIN=$(python -c "import autothink.serve.vllm_parser as m; print(m.__file__)")
    vllm serve runs/rl --reasoning-parser-plugin "$PLUGIN" --reasoning-parser autothink
    # (vLLM >= 0.33 also takes the module name: --reasoning-parser-plugin autothink.serve.vllm_parser)

vLLM's stock parsers split at `</think>`, which a think-off reply does not have. This one splits
like `autothink serve`: the judge and the thinking are the reasoning, the answer is the content,
the tags are dropped (`autothink.inference.respond.ReasoningSplitter`, so both servers agree to the
character). Reasoning ends at `<answer>`.

The splitting (`AutoThinkSplit`) needs no vLLM and is tested alone; the parser class that vLLM
loads is defined only where vLLM is installed. Written against vLLM's `ReasoningParser`
interface of 0.16 (`extract_reasoning`, `extract_reasoning_streaming`, `DeltaMessage.reasoning`;
0.11.1 and later) and checked against that interface in tests, not against a running vLLM.
"""
from __future__ import annotations

from collections.abc import Sequence

from autothink.format import ANSWER, JUDGE
from autothink.inference.respond import ReasoningSplitter, split_reasoning


class AutoThinkSplit:
    """Reasoning/content of one reply: whole (`extract`) or delta by delta (`feed`), plus the token-id
    tests vLLM asks a parser for. `vocab` maps token strings to ids (the tags are single tokens)."""

    def __init__(self, vocab: dict[str, int]):
        self.judge_id, self.answer_id = vocab.get(JUDGE), vocab.get(ANSWER)
        if self.judge_id is None or self.answer_id is None:
            raise RuntimeError("the tokenizer lacks the AutoThink tokens; is this an autothink-trained model?")
        self.splitter = ReasoningSplitter()

    @staticmethod
    def extract(text: str) -> tuple[str | None, str | None]:
        reasoning, content = split_reasoning(text)
        return reasoning or None, content or None

    def feed(self, delta_text: str) -> tuple[str, str]:
        return self.splitter.feed(delta_text)

    def reasoning_ended(self, ids: Sequence[int]) -> bool:
        """Whether the last reply in `ids` has reached its answer (a later `<judge>` starts a new reply)."""
        for token in reversed(ids):
            if token == self.judge_id:
                return False
            if token == self.answer_id:
                return True
        return False

    def content_ids(self, ids: list[int]) -> list[int]:
        return ids[len(ids) - ids[::-1].index(self.answer_id):] if self.reasoning_ended(ids) else []


def _delta_message_class():
    for module in ("vllm.entrypoints.openai.engine.protocol", "vllm.entrypoints.generate.base.protocol",
                   "vllm.entrypoints.openai.protocol"):
        try:
            return __import__(module, fromlist=["DeltaMessage"]).DeltaMessage
        except (ImportError, AttributeError):
            continue
    raise ImportError("vLLM's DeltaMessage was not found in any known place")


try:
    from vllm.reasoning import ReasoningParser, ReasoningParserManager
except ImportError:  # no vLLM here: the splitting above stays importable
    ReasoningParser = None

if ReasoningParser is not None:

    @ReasoningParserManager.register_module("autothink")
    class AutoThinkReasoningParser(ReasoningParser):
        """vLLM's hooks over `AutoThinkSplit` (vLLM makes one parser per request)."""

        def __init__(self, tokenizer, *args, **kwargs):
            super().__init__(tokenizer, *args, **kwargs)
            self.split = AutoThinkSplit(self.vocab)
            delta = _delta_message_class()
            self.reasoning_field = "reasoning" if "reasoning" in delta.model_fields else "reasoning_content"
            self.delta = delta

        def is_reasoning_end(self, input_ids: Sequence[int]) -> bool:
            return self.split.reasoning_ended(input_ids)

        def extract_content_ids(self, input_ids: list[int]) -> list[int]:
            return self.split.content_ids(input_ids)

        def extract_reasoning(self, model_output: str, request) -> tuple[str | None, str | None]:
            return self.split.extract(model_output)

        def extract_reasoning_streaming(self, previous_text: str, current_text: str, delta_text: str,
                                        previous_token_ids: Sequence[int], current_token_ids: Sequence[int],
                                        delta_token_ids: Sequence[int]):
            reasoning, content = self.split.feed(delta_text)
            if not reasoning and not content:
                return None
            return self.delta(**{self.reasoning_field: reasoning or None, "content": content or None})
