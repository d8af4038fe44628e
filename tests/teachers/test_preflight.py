"""The pre-flight request (workers/teachers/preflight.py): a teacher that cannot be reached or
refuses the run's request ends `run` / `submit` / `resume` at once, with the server's words,
exit code 5, and nothing written."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from distillq.errors import EXIT_TEACHER, TeacherUnavailableError
from distillq.spec import TeacherSpec
from orchestrator.cli import main
from tests.composekit import free_port
from tests.teachers.conftest import SimFactory
from workers.teachers.preflight import preflight

Reply = tuple[int, Any]  # status, JSON body (or bytes)
Server = Callable[..., tuple[str, list[dict[str, Any]]]]


@pytest.fixture
def server() -> Iterator[Server]:
    """server(*replies) -> (url, bodies received): answers the chat endpoint with each reply
    in turn (the last one again after that)."""
    stops: list[Callable[[], None]] = []

    def start(*replies: Reply, models: list[str] | None = None
              ) -> tuple[str, list[dict[str, Any]]]:
        received: list[dict[str, Any]] = []

        async def listing(request: web.Request) -> web.Response:
            if models is None:
                return web.json_response({"detail": "Not Found"}, status=404)
            return web.json_response({"object": "list",
                                      "data": [{"id": m, "object": "model"} for m in models]})

        async def chat(request: web.Request) -> web.Response:
            received.append(await request.json())
            status, body = replies[min(len(received), len(replies)) - 1]
            if isinstance(body, bytes):
                return web.Response(status=status, body=body)
            return web.json_response(body, status=status)

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/v1/models", listing)
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        port = free_port()
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        def stop() -> None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

        stops.append(stop)
        return f"http://127.0.0.1:{port}", received

    yield start
    for stop in stops:
        stop()


def teacher(url: str, **over: Any) -> TeacherSpec:
    return TeacherSpec(kind="openai", base_url=url, model="big-llm", timeout_s=5, **over)


CHAT = {"id": "x", "model": "big-llm-2024", "choices": [{"message": {"content": '{"ok": true}'}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5}}


def test_a_teacher_that_answers_passes_with_the_runs_own_request(server: Server) -> None:
    url, bodies = server((200, CHAT))
    got = preflight(teacher(url, json_mode=True, extra_body={"top_k": 20}))
    assert (got.model, got.host, got.rate_limited) == ("big-llm-2024", url[len("http://"):],
                                                       False)
    (body,) = bodies
    assert body["model"] == "big-llm" and body["top_k"] == 20 and "seed" in body
    assert body["response_format"] == {"type": "json_object"}
    assert "JSON" in body["messages"][0]["content"], "json_mode needs the word in the prompt"


def test_a_model_the_server_does_not_list_is_named_in_a_warning(server: Server) -> None:
    """llama-cpp-python answers any model name with the one it serves: pre-flight passes, and
    says so with the models the server lists."""
    url, _ = server((200, CHAT), models=["smollm2-135m"])
    line = preflight(teacher(url)).line()
    assert "warning: the server lists the models 'smollm2-135m', not 'big-llm'" in line
    listed, _ = server((200, CHAT), models=["other", "big-llm"])
    assert "warning" not in preflight(teacher(listed)).line()
    unlisted, _ = server((200, CHAT))  # no /v1/models: nothing to say
    assert "warning" not in preflight(teacher(unlisted)).line()


def test_the_simulated_teacher_passes_and_is_named_as_the_simulation(
        sim: SimFactory, server: Server) -> None:
    got = preflight(TeacherSpec(kind="openai", base_url=sim(), model="distillq-sim"))
    assert got.host.startswith("127.0.0.1:") and got.simulated
    assert got.line().endswith("; it is distillq's SIMULATED teacher, not an LLM, and the "
                               "report will say so")
    url, _ = server((200, CHAT))  # no system_fingerprint: a real server, as far as we know
    assert "SIMULATED" not in preflight(teacher(url)).line()


def test_a_server_that_is_not_listening() -> None:
    with pytest.raises(TeacherUnavailableError, match=r"'big-llm' at 127\.0\.0\.1:\d+: cannot "
                                                      r"connect"):
        preflight(teacher(f"http://127.0.0.1:{free_port()}"))


def test_a_refusal_gives_the_servers_own_message_and_never_the_key(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    url, bodies = server((404, {"error": {"message": "Server is pinned to smollm2; requested "
                                                      "'big-llm'", "type": "invalid_request"}}))
    with pytest.raises(TeacherUnavailableError) as err:
        preflight(teacher(url))
    assert str(err.value) == (f"teacher 'big-llm' at {url[len('http://'):]} refused the "
                              "request: HTTP 404: Server is pinned to smollm2; requested "
                              "'big-llm'")
    assert len(bodies) == 1, "a 4xx is not tried again"
    monkeypatch.setenv("TEACHER_KEY", "sk-secret-0123456789")
    url, _ = server((401, {"error": {"message": "Incorrect API key sk-secret-0123456789"}}))
    with pytest.raises(TeacherUnavailableError) as err:
        preflight(teacher(url, api_key_env="TEACHER_KEY"))
    assert "HTTP 401: Incorrect API key ***" in str(err.value)
    assert "sk-secret" not in str(err.value)


def test_an_account_out_of_quota_is_refused_and_header_secrets_are_blanked(
        server: Server) -> None:
    url, _ = server((429, {"error": {"message": "You exceeded your current quota, please check "
                                                "your plan and billing details.",
                                     "code": "insufficient_quota"}}))
    with pytest.raises(TeacherUnavailableError, match="HTTP 429: You exceeded your current"):
        preflight(teacher(url))
    url, _ = server((403, {"error": {"message": "bad gateway token gw-0123456789abcdef"}}))
    with pytest.raises(TeacherUnavailableError) as err:
        preflight(teacher(url, headers={"X-Gateway-Key": "gw-0123456789abcdef"}))
    assert "gw-0123456789abcdef" not in str(err.value) and "token ***" in str(err.value)


def test_no_preflight_skips_it(server: Server) -> None:
    import argparse

    from orchestrator.commands import check_teacher

    dead = teacher(f"http://127.0.0.1:{free_port()}")
    check_teacher(dead, argparse.Namespace(no_preflight=True))  # nothing sent, nothing raised
    with pytest.raises(TeacherUnavailableError):
        check_teacher(dead, argparse.Namespace(no_preflight=False))


def test_a_missing_key_is_named_before_any_request() -> None:
    with pytest.raises(TeacherUnavailableError, match="NO_SUCH_KEY_VAR is not set"):
        preflight(teacher("http://127.0.0.1:9", api_key_env="NO_SUCH_KEY_VAR"))


def test_a_busy_server_passes_and_a_failing_one_is_tried_twice(server: Server) -> None:
    url, _ = server((429, {"error": {"message": "slow down"}}))
    assert preflight(teacher(url)).rate_limited
    url, bodies = server((503, b"upstream down"), (503, b"upstream down"))
    with pytest.raises(TeacherUnavailableError, match="HTTP 503: upstream down"):
        preflight(teacher(url))
    assert len(bodies) == 2
    url, bodies = server((502, b"blip"), (200, CHAT))
    assert preflight(teacher(url)).model == "big-llm-2024" and len(bodies) == 2


def test_an_answer_that_is_no_chat_completion(server: Server) -> None:
    url, _ = server((200, {"object": "list", "data": []}))
    with pytest.raises(TeacherUnavailableError, match="not with a chat completion"):
        preflight(teacher(url))


def test_extra_body_may_only_add_fields() -> None:
    with pytest.raises(ValueError, match="'temperature' is set by distillq itself "
                                         r"\(set it with teacher.temperature\)"):
        TeacherSpec(kind="openai", base_url="http://x", extra_body={"temperature": 0})


def test_run_ends_with_exit_5_and_writes_nothing(
        tmp_path: Path, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = server((404, {"error": {"message": "model 'big-llm' not found"}}))
    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},l{i % 2}\n" for i in range(40)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "run_id": "r1", "storage": str(tmp_path / "runs"),
        "dataset": {"train": str(data), "seed_size": 10},
        "teacher": {"kind": "openai", "base_url": url, "model": "big-llm"}}))
    assert main(["run", str(spec)]) == EXIT_TEACHER
    err = capsys.readouterr().err
    assert err.startswith("error: teacher 'big-llm' at ") and "model 'big-llm' not found" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert "Traceback" not in err
