"""`autothink serve` with OpenAI `tools`: tool calls out of the model's `<tool_call>` blocks, streamed and not,
an agent loop driven by the `openai` client, the tools rendered into a local model's prompt, bad requests."""
import copy
import json

import openai
import pytest

from autothink.inference.backend import Backend, Completion
from autothink.inference.local import LocalBackend
from autothink.models import tiny_model
from autothink.serve.app import running_server
from autothink.serve.protocol import ToolCallStream
from autothink.tasks.tool_calls import ensure_tool_template, tool_call_text

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL = tool_call_text("get_weather", {"city": "Paris"})


class ToolAgent(Backend):
    """Calls get_weather until it has seen a tool result, then answers; records what it was shown."""

    name = "tool-agent"
    supports_tools = True

    def __init__(self, call=CALL):
        self.call, self.seen = call, []

    def _generate(self, conversations, params, thinking, tools=None):
        self.seen.append((conversations, tools))
        out = []
        for conversation in conversations:
            done = any(m["role"] == "tool" for m in conversation)
            text = "It is sunny in Paris." if done else f"Let me check.\n{self.call}"
            out.append([Completion(text, "stop", len(text.split()), 12)] * params.n)
        return out


def _client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)


def test_tool_calls_come_back_to_the_openai_client_and_an_agent_loop_runs():
    agent = ToolAgent()
    with running_server(agent) as url:
        client = _client(url)
        first = client.chat.completions.create(model="tool-agent", messages=ASK, tools=TOOLS)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"} and call.id.startswith("call_")
        assert agent.seen[-1][1] == TOOLS  # the schemas reached the backend as sent
        # The client runs the tool and sends the conversation back, as agent frameworks do.
        messages = ASK + [choice.message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}]
        second = client.chat.completions.create(model="tool-agent", messages=messages, tools=TOOLS)
        assert second.choices[0].finish_reason == "stop" and second.choices[0].message.tool_calls is None
        assert second.choices[0].message.content == "It is sunny in Paris."
        seen = agent.seen[-1][0][0]
        assert seen[1]["tool_calls"][0]["id"] == call.id and seen[1]["tool_calls"][0]["function"] == {
            "name": "get_weather", "arguments": call.function.arguments}
        assert seen[2] == {"role": "tool", "content": '{"sky": "sunny"}', "tool_call_id": call.id}
        # tool_choice "none": no tools shown, no parsing
        plain = client.chat.completions.create(model="tool-agent", messages=ASK, tools=TOOLS, tool_choice="none")
        assert agent.seen[-1][1] is None and plain.choices[0].message.tool_calls is None
        assert "<tool_call>" in plain.choices[0].message.content  # without tools, text is text


def test_a_streamed_reply_ends_with_its_tool_calls():
    with running_server(ToolAgent()) as url:
        stream = _client(url).chat.completions.create(model="tool-agent", messages=ASK, tools=TOOLS, stream=True)
        chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert content == "Let me check.\n" and "<tool_call>" not in content
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_a_call_that_does_not_parse_stays_in_the_content():
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
    with running_server(ToolAgent(call=broken)) as url:
        reply = _client(url).chat.completions.create(model="tool-agent", messages=ASK, tools=TOOLS)
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].finish_reason == "stop"
    assert broken in reply.choices[0].message.content


def test_tool_call_stream_holds_back_only_what_may_be_a_call():
    s = ToolCallStream()
    assert s.feed("a <to") == "a " and s.feed("ol") == "" and s.feed("s are fine") == "<tools are fine"
    assert s.finish() == ("", [])
    s = ToolCallStream()
    pieces = [s.feed(p) for p in ("x", "<tool_", "call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>", " y")]
    assert "".join(pieces) == "x"
    text, calls = s.finish()
    assert text == "y" and [c["function"]["name"] for c in calls] == ["f"]


@pytest.mark.parametrize("body,needle", [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools.0.type"),
    ({"tools": TOOLS * 2}, "tool names must be unique"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "description": "x" * 70000}}]}, "longer than 65536"),
    ({"tools": TOOLS, "tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "legacy function calling"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
    ({"messages": [{"role": "user", "content": None}]}, "needs content"),
    ({"messages": ASK + [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": "[" * 70000}}]}]}, "arguments"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "only assistant"),
])
def test_bad_tool_requests_get_400(body, needle):
    with running_server(ToolAgent()) as url:
        with pytest.raises(openai.BadRequestError, match=needle):
            _client(url).chat.completions.create(model="tool-agent", **({"messages": ASK} | body))


def test_deeply_nested_arguments_in_a_request_are_rendered_as_text(tokenizer):
    """1500 open brackets: json.loads raises RecursionError; the template gets the text as written."""
    model, tok = tiny_model(copy.deepcopy(tokenizer))
    ensure_tool_template(tok)
    turns = ASK + [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "[" * 1500}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    with running_server(LocalBackend(model, tok, name="tiny")) as url:
        reply = _client(url).chat.completions.create(model="tiny", messages=turns, tools=TOOLS, max_tokens=4)
    assert reply.choices[0].finish_reason in ("length", "stop", "tool_calls")


def test_a_backend_without_tools_refuses_them(tokenizer):
    class NoTools(ToolAgent):
        supports_tools = False

    with running_server(NoTools()) as url:
        with pytest.raises(openai.BadRequestError, match="cannot show tools"):
            _client(url).chat.completions.create(model="tool-agent", messages=ASK, tools=TOOLS)


def test_a_local_model_sees_the_tools_and_the_tool_turns(tokenizer):
    model, tok = tiny_model(copy.deepcopy(tokenizer))
    ensure_tool_template(tok)
    backend = LocalBackend(model, tok, name="tiny")
    assert backend.prompt_tokens(ASK, tools=TOOLS) > backend.prompt_tokens(ASK) + 20  # the schemas are in the prompt
    turns = ASK + [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    assert "<tool_response>\nsunny\n</tool_response>" in backend.render(turns, tools=TOOLS)
    with running_server(backend) as url:
        reply = _client(url).chat.completions.create(model="tiny", messages=turns, tools=TOOLS, max_tokens=8)
        assert reply.choices[0].finish_reason in ("length", "stop", "tool_calls")
        stream = _client(url).chat.completions.create(model="tiny", messages=turns, tools=TOOLS, max_tokens=8,
                                                      stream=True)
        assert [c.choices[0].finish_reason for c in stream if c.choices][-1] in ("length", "stop", "tool_calls")
