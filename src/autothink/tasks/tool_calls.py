"""Tool calls in text: the chat template that renders them and the parser that reads them back.

The format is Hermes / Qwen2.5's, which most open models are trained on and which TRL parses:

    <tool_call>
    {"name": "run_tests", "arguments": {"path": "solution.py"}}
    </tool_call>

inside the assistant turn; tool results come back in a user turn as
`<tool_response>\\n...\\n</tool_response>`. A model whose own template renders tools keeps it;
a ChatML model without tool support (SmolLM2) gets `CHATML_TOOLS`, which keeps its default
system prompt.
"""
from __future__ import annotations

import json
import re
import uuid

TOOL_CALL, TOOL_CALL_END = "<tool_call>", "</tool_call>"

# Qwen2.5's tool template with the model's own default system prompt in place of Qwen's.
CHATML_TOOLS = (
    "{%- set system = messages[0].content if messages and messages[0].role == 'system' else DEFAULT_SYSTEM %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' + (system + '\\n\\n' if system else '') }}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}"
    "\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif system %}{{- '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant' + ('\\n' + message.content if message.content else '') }}"
    "{%- for call in message.tool_calls or [] %}"
    "{%- set call = call.function if call.function is defined else call %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' + (call.arguments | tojson) + '}"
    "\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_PROBE_NAME, _PROBE_KEY = "probe_tool_8f3e", "probe_key_b9d4"
_PROBE_VALUE, _PROBE_RESULT = "probe_val_d6e7", "probe_out_c4f9"


def renders_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template shows a tool call's name, arguments and result (as TRL checks)."""
    if not tokenizer.chat_template:
        return False
    call = {"type": "function", "function": {"name": _PROBE_NAME, "arguments": {_PROBE_KEY: _PROBE_VALUE}}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": _PROBE_NAME, "content": _PROBE_RESULT}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # jinja2 errors of templates that reject the tool role
        return False
    return all(s in text for s in (_PROBE_NAME, _PROBE_KEY, _PROBE_VALUE, _PROBE_RESULT))


def ensure_tool_template(tokenizer) -> bool:
    """Give a ChatML tokenizer whose template cannot render tools the `CHATML_TOOLS` template.

    The AutoThink `thinking` suffix is re-installed on top. Returns True when the template changed.

    Raises:
        ValueError: the template renders no tools and is not ChatML (write one for it).
    """
    from autothink.format import install_chat_template

    if renders_tools(tokenizer):
        return False
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    if not probe.startswith("<|im_start|>"):
        raise ValueError("the model's chat template cannot render tool calls and is not ChatML; set a tool-calling "
                         "template on the tokenizer (tokenizer.chat_template = ...) first")
    default = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user", probe, re.S)
    system = json.dumps(default.group(1) if default else "")
    tokenizer.chat_template = "{%- set DEFAULT_SYSTEM = " + system + " %}" + CHATML_TOOLS
    install_chat_template(tokenizer)
    return True


INVALID_CALL = "invalid_tool_call"


def tool_call_text(name: str, arguments) -> str:
    """One call as the model writes it: a `<tool_call>` block around `{"name", "arguments"}` JSON."""
    return f"{TOOL_CALL}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{TOOL_CALL_END}"


def parse_tool_calls(text: str) -> tuple[str, list[dict], dict[int, str]]:
    """Split an assistant reply into its text and its `<tool_call>` blocks; never raises.

    Returns:
        `(content, tool_calls, errors)`: `content` is the text outside the blocks (stripped);
        `tool_calls` are OpenAI-style `{"id", "type": "function", "function": {"name", "arguments"}}`
        with `arguments` a JSON string; a block that is not `{"name": str, "arguments": object}`
        JSON becomes a call named `INVALID_CALL` whose arguments hold the raw text, and `errors`
        maps its index to what was wrong (the environment answers it with that error).
    """
    calls, errors, pieces, pos = [], {}, [], 0
    for match in re.finditer(re.escape(TOOL_CALL) + r"(.*?)(?:" + re.escape(TOOL_CALL_END) + r"|\Z)", text, re.S):
        pieces.append(text[pos:match.start()])
        pos = match.end()
        raw = match.group(1).strip()
        call_id = f"call_{uuid.uuid4().hex[:12]}"
        problem = None
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            obj, problem = None, f"not JSON ({err.msg} at column {err.colno})"
        except RecursionError:
            obj, problem = None, "JSON nested too deeply"
        if problem is None and not (isinstance(obj, dict) and isinstance(obj.get("name"), str) and obj["name"]):
            problem = 'expected {"name": <tool name>, "arguments": {...}}'
        elif problem is None and not isinstance(obj.get("arguments", {}), dict):
            problem = "arguments must be a JSON object"
        if not match.group(0).endswith(TOOL_CALL_END):
            problem = problem or f"unterminated {TOOL_CALL}"
        if problem:
            errors[len(calls)] = problem
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": INVALID_CALL, "arguments": json.dumps({"text": raw})}})
            continue
        calls.append({"id": call_id, "type": "function",
                      "function": {"name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}))}})
    pieces.append(text[pos:])
    return "".join(pieces).strip(), calls, errors


def split_tool_calls(text: str) -> tuple[str, list[dict]]:
    """A reply as an OpenAI assistant message has it: (content, tool_calls). A block that does not parse is
    kept in the content (after the text, its inside as written, closed by `</tool_call>`), so a client sees it
    rather than a call it cannot run."""
    content, calls, problems = parse_tool_calls(text)
    kept = [c for i, c in enumerate(calls) if i not in problems]
    broken = [f"{TOOL_CALL}\n{json.loads(calls[i]['function']['arguments'])['text']}\n{TOOL_CALL_END}"
              for i in sorted(problems)]
    return "\n".join(p for p in [content, *broken] if p), kept


def chat_message(message: dict) -> dict:
    """A message as chat templates take it: tool-call arguments as objects, no status fields."""
    out = {"role": message["role"], "content": message.get("content") or ""}
    if message.get("tool_calls"):
        calls = []
        for call in message["tool_calls"]:
            arguments = call["function"].get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments) if arguments.strip() else {}
                except (json.JSONDecodeError, RecursionError):
                    pass  # rendered as the string the model wrote
            calls.append({"id": call.get("id"), "type": "function",
                          "function": {"name": call["function"]["name"], "arguments": arguments}})
        out["tool_calls"] = calls
    if message["role"] == "tool":
        out["tool_call_id"] = message.get("tool_call_id")
        if message.get("name"):
            out["name"] = message["name"]
    if message.get("reasoning_content"):
        out["reasoning_content"] = message["reasoning_content"]
    return out


def openai_message(message: dict) -> dict:
    """A message as the OpenAI API takes it: its role, content and tool fields; no status fields."""
    keep = ("role", "content", "tool_calls", "tool_call_id", "name")
    return {k: message[k] for k in keep if message.get(k) is not None or k == "content"}
