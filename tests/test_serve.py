"""`dialsum serve` on a free loopback port: the openai client, /v1/summarize = predict, concurrent clients batched,
every bad request a 4xx naming the field, the web page in headless Chromium; vLLM's command line."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import SAMPLE
from dialsum.errors import DialsumError

DEV = SAMPLE / "dev.csv"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _text(dialogue) -> str:
    return "\n".join(f"{t.speaker}: {t.utterance}" for t in dialogue.turns)


@pytest.fixture(scope="module")
def served(tiny_lora_run):
    """The LoRA run served by uvicorn in a thread (stopped after the module); what `dialsum predict` says for each
    dev dialogue on its own, computed on the same loaded model before the server starts."""
    import uvicorn

    from dialsum.data import load_dialogues
    from dialsum.predict import predict_split
    from dialsum.serve import create_app, load_server

    server = load_server(tiny_lora_run, batch_window_ms=50, max_batch=4)
    dialogues = load_dialogues(DEV)[:6]
    dcs = load_dialogues(SAMPLE / "dcs_sample.jsonl")[:1]

    def alone(ds):
        return [predict_split(server.predictor, [d], progress=False).summaries[0] for d in ds]

    expected, expected_dcs = alone(dialogues), alone(dcs)
    expected_no_topic = alone([replace(dialogues[0], topic=None)])[0]
    port = _free_port()
    http = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    for _ in range(200):
        if http.started:
            break
        time.sleep(0.05)
    assert http.started, "uvicorn did not start"
    yield SimpleNamespace(
        url=f"http://127.0.0.1:{port}",
        server=server,
        dialogues=dialogues,
        expected=expected,
        dcs=dcs,
        expected_dcs=expected_dcs,
        expected_no_topic=expected_no_topic,
    )
    http.should_exit = True
    thread.join(timeout=10)


@pytest.mark.slow
def test_openai_client_gets_the_summary(served):
    """The last user message is the dialogue: the whole training prompt (topic read back from the question), or bare
    `#PersonN#:` lines. Mutation caught: the question's topic not read back (the summary of the default topic)."""
    from openai import BadRequestError, NotFoundError, OpenAI

    from dialsum.prompt import user_message

    client = OpenAI(base_url=f"{served.url}/v1", api_key="not-needed", max_retries=0)
    model = client.models.list().data[0].id
    assert model == served.server.name
    dialogue = served.dialogues[0]
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": user_message(dialogue, served.server.config.prompt)}]
    )
    assert completion.choices[0].message.content == served.expected[0]
    assert completion.usage.prompt_tokens > 100 and completion.usage.completion_tokens > 0
    bare = client.chat.completions.create(model=model, messages=[{"role": "user", "content": _text(dialogue)}])
    assert bare.choices[0].message.content == served.expected_no_topic
    with pytest.raises(NotFoundError, match="model"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": _text(dialogue)}])
    with pytest.raises(BadRequestError, match="temperature"):
        client.chat.completions.create(
            model=model, temperature=0.7, messages=[{"role": "user", "content": _text(dialogue)}]
        )


@pytest.mark.slow
def test_summarize_equals_predict_for_text_dcs_and_batch(served):
    import httpx

    for dialogue, expected in zip(served.dialogues[:3], served.expected):
        body = httpx.post(f"{served.url}/v1/summarize", json={"dialogue": _text(dialogue), "topic": dialogue.topic})
        assert body.status_code == 200, body.text
        data = body.json()
        assert data["summary"] == expected
        assert data["tokens"]["prompt"] > 0 and data["tokens"]["total"] == sum(
            data["tokens"][k] for k in ("prompt", "completion")
        )
    record = served.dcs[0]
    conversation = [{"speaker": t.speaker, "utterance": t.utterance} for t in record.turns]
    body = httpx.post(
        f"{served.url}/v1/summarize", json={"conversation": conversation, "subject_keyword": record.topic.split(", ")}
    )
    assert body.status_code == 200, body.text
    assert body.json()["summary"] == served.expected_dcs[0]
    batch = [{"id": d.id, "dialogue": _text(d), "topic": d.topic} for d in served.dialogues[:3]]
    data = httpx.post(f"{served.url}/v1/summarize", json={"batch": batch}, timeout=60).json()
    assert [r["id"] for r in data["results"]] == [d.id for d in served.dialogues[:3]]
    assert [r["summary"] for r in data["results"]] == served.expected[:3]


@pytest.mark.slow
def test_concurrent_clients_are_batched_and_all_correct(served):
    """Mutation caught: a worker that answers futures out of batch order (each client gets another's summary)."""
    import httpx

    calls_before = served.server.generate_calls
    jobs = [i % len(served.dialogues) for i in range(12)]

    def ask(i):
        d = served.dialogues[i]
        response = httpx.post(f"{served.url}/v1/summarize", json={"dialogue": _text(d), "topic": d.topic}, timeout=120)
        return i, response.json()

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(ask, jobs))
    assert [a["summary"] for _, a in answers] == [served.expected[i] for i, _ in answers]
    assert served.server.generate_calls - calls_before < len(jobs), "requests arriving together share a generate call"
    assert max(a["batch_size"] for _, a in answers) > 1


LONG = "#Person1#: " + "안녕하세요 반갑습니다 " * 600


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/summarize", {"dialogue": ""}, 422, "dialogue"),
        ("/v1/summarize", {"dialogue": "   "}, 422, "dialogue"),
        ("/v1/summarize", {"dialogue": "그냥 한 줄의 글입니다."}, 422, "dialogue"),
        ("/v1/summarize", {"conversation": []}, 422, "conversation"),
        ("/v1/summarize", {"conversation": [{"speaker": "A", "utterance": " "}]}, 422, "conversation"),
        ("/v1/summarize", {"conversation": [{"speaker": "A"}]}, 422, "conversation[0].utterance"),
        ("/v1/summarize", {"dialogue": LONG}, 422, "dialogue"),
        ("/v1/summarize", b'{"dialogue": "#Person1#: hi"', 400, "body"),
        ("/v1/summarize", {"dialogue": "#Person1#: 안녕", "colour": "red"}, 422, "colour"),
        ("/v1/summarize", {"dialogue": 5}, 422, "dialogue"),
        ("/v1/summarize", {}, 422, "dialogue"),
        ("/v1/summarize", {"dialogue": "#Person1#: 안녕", "conversation": []}, 422, "dialogue"),
        ("/v1/summarize", {"batch": [{"dialogue": "#Person1#: 안녕"}] * 5}, 422, "batch"),
        ("/v1/summarize", {"batch": []}, 422, "batch"),
        ("/v1/summarize", {"batch": [{"dialogue": "#Person1#: 안녕"}, {"dialogue": ""}]}, 422, "batch[1].dialogue"),
        ("/v1/summarize", [1, 2], 422, "body"),
        (
            "/v1/summarize",
            {"dialogue": "#Person1#: 안녕", "topic": "a", "subject_keyword": ["b"]},
            422,
            "subject_keyword",
        ),
        ("/v1/chat/completions", {"model": "x", "messages": []}, 404, "model"),
        (
            "/v1/chat/completions",
            {"model": "{name}", "messages": [{"role": "system", "content": "hi"}]},
            422,
            "messages",
        ),
        (
            "/v1/chat/completions",
            {"model": "{name}", "messages": [{"role": "user", "content": "hi"}]},
            422,
            "messages[0].content",
        ),
        ("/v1/chat/completions", {"model": "{name}", "stream": True, "messages": []}, 400, "stream"),
        ("/v1/chat/completions", {"model": "{name}", "messages": [], "logit_bias": {}}, 422, "logit_bias"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(served, path, body, status, field):
    """Mutations caught: the too-long check removed (a 200 for a dialogue with no turn left), extra=forbid dropped
    (an unknown field accepted silently), the batch limit not checked."""
    import httpx

    if isinstance(body, bytes):
        response = httpx.post(served.url + path, content=body, headers={"Content-Type": "application/json"})
    else:
        body = json.loads(json.dumps(body).replace("{name}", served.server.name))
        response = httpx.post(served.url + path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"], error


@pytest.mark.slow
def test_health_and_the_web_page_in_chromium(served, tmp_path):
    import httpx

    from browser import chromium_page, save_screenshot

    health = httpx.get(f"{served.url}/health").json()
    assert health["status"] == "ok" and health["model"] == served.server.name
    dialogue = served.dialogues[1]
    with chromium_page(1000, 800) as page:
        page.goto(served.url + "/")
        page.fill("#dialogue", _text(dialogue))
        page.fill("#topic", dialogue.topic)
        page.click("#submit")
        page.wait_for_selector('#result[data-done="1"]', timeout=60_000)
        assert page.inner_text("#summary") == served.expected[1]
        meta = page.inner_text("#meta")
        assert "tokens:" in meta and "time:" in meta
        save_screenshot(page, tmp_path, "serve-page.png")
        page.fill("#dialogue", "no turns here")
        page.click("#submit")
        page.wait_for_selector("#result.error", timeout=30_000)
        assert "dialogue" in page.inner_text("#summary")
    assert (tmp_path / "serve-page.png").stat().st_size > 5000


def test_vllm_command_sets_max_lora_rank_from_the_adapter(tmp_path):
    """vLLM refuses adapters above its default max_lora_rank of 16: the command asks for the adapter's rank."""
    from conftest import tiny_run_config
    from dialsum.models import InferenceSource
    from dialsum.vllm_serve import vllm_server_command

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 64}))
    config = tiny_run_config(lora=True)
    config.model.name_or_path = "Bllossom/llama-3.2-Korean-Bllossom-3B"
    source = InferenceSource(config=config, model_dir=tmp_path / "adapter", adapter=True)
    command = vllm_server_command(source, "127.0.0.1", 8001, "run")
    joined = " ".join(command)
    assert "--enable-lora --max-lora-rank 64" in joined and f"--lora-modules run={tmp_path / 'adapter'}" in joined
    from dialsum.models import (
        resolve_model_path,
    )  # a hub id found in $DIALSUM_MODEL_DIRS / ../shared/models is that folder

    base = resolve_model_path("Bllossom/llama-3.2-Korean-Bllossom-3B")
    assert f"--model {base}" in joined and "--host 127.0.0.1" in joined
    merged = vllm_server_command(InferenceSource(config, str(tmp_path), adapter=False), "127.0.0.1", 8001, "x")
    assert "--enable-lora" not in merged and merged[merged.index("--model") + 1] == str(tmp_path)


def test_vllm_missing_is_one_line_and_the_default_bind_is_loopback(monkeypatch):
    import importlib.util
    import inspect

    from dialsum import serve

    assert inspect.signature(serve.serve).parameters["host"].default == "127.0.0.1"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(DialsumError, match=r"pip install 'dialsum\[vllm\]'") as error:
        serve.serve(Path("nowhere"), backend="vllm")
    assert "\n" not in str(error.value)
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "dialsum.cli", "serve", "nowhere", "--port", "70000"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines() == ["error: --port 70000: not a TCP port"]
