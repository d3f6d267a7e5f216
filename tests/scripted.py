"""A scripted `Backend` whose output is known token by token, for exact tests of replies and serving.

Its "tokens" are AutoThink tags and whitespace-ended words; it always continues one fixed
response (`script`) from where the reply so far (forced prefix + prefix) left off: after the
last tag it has seen, skipping the words already written after that tag. It honours
`max_tokens`, stop strings (cut, `stop_reason` set) and counts an end-of-sequence token, like
`LocalBackend`.
"""
import re
import threading
import time

from autothink.format import forced_prefix
from autothink.inference.backend import Backend, Completion, SamplingParams

TOKEN_RE = re.compile(r"<[a-z_/]+>|[^<\s]+\s*|\s+")
SCRIPT = ("<judge>Two steps of algebra. </judge><think_on><think>3 x = 36 so x = 36 / 3 = 12 </think>"
          "<answer>x = 12 </answer>")


class WordTokenizer:
    """The scripted backend's tokenizer: tags and whitespace-ended words."""

    def encode(self, text, add_special_tokens=False):
        return TOKEN_RE.findall(text)


class Scripted(Backend):
    """Args: delay (seconds per generate call), gate (a threading.Event every call waits for)."""

    supports_prefix = True

    def __init__(self, script=SCRIPT, name="scripted", delay=0.0, gate=None, tokenizer=True):
        self.script = TOKEN_RE.findall(script)
        self.name, self.delay, self.gate = name, delay, gate
        if tokenizer:
            self.tokenizer = WordTokenizer()
        self.calls = []  # (conversations, params, thinking, prefixes) per generate call
        self._lock = threading.Lock()

    def _position(self, reply: str) -> int:
        tokens = TOKEN_RE.findall(reply)
        tags = [i for i, t in enumerate(tokens) if t.startswith("<")]
        if not tags:
            return len(tokens)
        tag = tokens[tags[-1]]
        if tag not in self.script:
            return len(self.script)
        return self.script.index(tag) + 1 + len(tokens) - tags[-1] - 1

    def _complete(self, conversation, params: SamplingParams, reply: str) -> Completion:
        prompt_tokens = sum(len(TOKEN_RE.findall(m["content"])) for m in conversation)
        text, count = "", 0
        for token in self.script[self._position(reply):]:
            if count == params.max_tokens:
                return Completion(text, "length", count, prompt_tokens)
            text, count = text + token, count + 1
            hits = [(text.find(s), s) for s in params.stop if s in text]
            if hits:
                cut, stop = min(hits)
                return Completion(text[:cut], "stop", count, prompt_tokens, stop_reason=stop)
        if count == params.max_tokens:
            return Completion(text, "length", count, prompt_tokens)
        return Completion(text, "stop", count + 1, prompt_tokens)  # + the end-of-sequence token

    def _generate(self, conversations, params, thinking, prefixes=None):
        with self._lock:
            self.calls.append((conversations, params, thinking, prefixes))
        if self.gate is not None:
            assert self.gate.wait(timeout=30), "the test never opened the gate"
        time.sleep(self.delay)
        start = forced_prefix(thinking or "auto")
        prefixes = prefixes or [""] * len(conversations)
        return [[self._complete(c, params, start + p)] * params.n for c, p in zip(conversations, prefixes)]

    def stream(self, conversation, params, thinking=None, prefix=""):
        """Token by token, to exercise the incremental split of a stream."""
        completion = self.generate([conversation], params, thinking, prefix=prefix or None)[0][0]
        yield from TOKEN_RE.findall(completion.text)
        yield completion
