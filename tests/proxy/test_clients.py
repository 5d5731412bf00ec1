"""Real clients, unmodified, through Footprint: openai-agents with its default model running
one tool-using turn, and LangChain's ChatOpenAI on the Responses API."""

from __future__ import annotations

import openai
import pytest
from agents import Agent, RunConfig, Runner, function_tool
from agents.models import get_default_model
from agents.models.openai_provider import OpenAIProvider
from langchain_openai import ChatOpenAI

from tests.support.fake_upstream import UpstreamLog
from tests.support.servers import ServerThread

TEXT = "w0 w1 w2 w3 w4 w5 w6 w7"


async def test_openai_agents_runs_a_tool_using_turn_with_its_default_model(
    proxy: ServerThread, upstream_log: UpstreamLog
) -> None:
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"sunny in {city}"

    agent = Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather])
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    config = RunConfig(
        model_provider=OpenAIProvider(openai_client=client, use_responses=True),
        tracing_disabled=True,
    )
    result = await Runner.run(agent, "What is the weather in Seoul?", run_config=config)
    assert asked == ["Seoul"]
    assert result.final_output == TEXT
    models = {body["model"] for body in upstream_log.requests}
    assert models == {get_default_model()}
    first, second = upstream_log.requests
    assert first["tools"][0]["name"] == "get_weather"
    outputs = [i for i in second["input"] if i.get("type") == "function_call_output"]
    assert outputs and outputs[0]["output"] == "sunny in Seoul"
    for response in result.raw_responses:
        assert response.usage.output_tokens > 0


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_langchain_chat_openai_on_the_responses_api(
    proxy: ServerThread, upstream_log: UpstreamLog, streaming: bool
) -> None:
    llm = ChatOpenAI(
        model="echo",
        base_url=f"{proxy.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        use_responses_api=True,
        max_retries=0,
    )
    if streaming:
        chunks = list(llm.stream("hello there"))
        message = chunks[0]
        for chunk in chunks[1:]:
            message = message + chunk  # type: ignore[assignment]
    else:
        message = llm.invoke("hello there")  # type: ignore[assignment]
    assert message.text == TEXT
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == 8
    assert upstream_log.requests[-1]["input"][0]["content"] == "hello there"
    assert upstream_log.requests[-1].get("stream", False) is streaming
