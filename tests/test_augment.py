"""`dialsum augment` against a real chat-completions server on 127.0.0.1 (http.server in a thread, answering from a
script): retries, the cache, validation, the key, concurrency and the rate limit, as the server saw them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dialsum.augment import build_jobs, load_recipe
from dialsum.augment_validate import NgramIndex, dialogue_text, jaccard, masks, speaker_swap
from dialsum.cli import app
from dialsum.config import load_config
from dialsum.data import load_dialogues

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "dialsum" / "sample_data"
KEY = "sk-test-0123456789-NEVER-WRITTEN"
KEY_ENV = "DIALSUM_TEST_AUGMENT_KEY"
_DIALOGUE = re.compile(r"\[대화\]\n(.*)\Z", re.S)


def paraphrase(dialogue: str) -> str:
    """A deterministic 'paraphrase': every utterance's words reversed (masks and tags kept)."""
    lines = []
    for line in dialogue.split("\n"):
        speaker, _, utterance = line.partition(": ")
        words = [w if "#" in w else w[::-1] for w in reversed(utterance.split())]
        lines.append(f"{speaker}: {' '.join(words)}")
    return "\n".join(lines)


class Script:
    """What the server answers. `actions[marker]`: the actions, in order, for requests whose prompt contains
    `marker` (then 'ok'); each request is logged with its start and end time."""

    def __init__(self, delay: float = 0.0):
        self.actions: dict[str, list[str]] = {}
        self.answers: dict[str, str] = {}  # marker -> a fixed answer for action 'answer'
        self.delay = delay
        self.log: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.hang = 2.0

    def action(self, prompt: str) -> tuple[str, str | None]:
        with self.lock:
            for marker, queue in self.actions.items():
                if marker in prompt:
                    return (queue.pop(0) if queue else "ok"), marker
        return "ok", None


def serve(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, body: bytes, headers: dict | None = None):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            start = time.monotonic()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"]
            with script.lock:
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            action, marker = script.action(prompt)
            try:
                time.sleep(script.delay)
                self._answer(action, marker, prompt, body)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with script.lock:
                    script.in_flight -= 1
                    script.log.append(
                        {
                            "start": start,
                            "end": time.monotonic(),
                            "action": action,
                            "prompt": prompt,
                            "auth": self.headers.get("Authorization"),
                        }
                    )

        def _answer(self, action, marker, prompt, body):
            if action == "429":
                return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
            if action == "500":
                return self._send(500, b'{"error": {"message": "boom"}}')
            if action == "401":
                message = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}})
                return self._send(401, message.encode())
            if action == "400":
                message = json.dumps({"error": {"message": f"bad request from key {KEY}"}})
                return self._send(400, message.encode())
            if action == "malformed":
                return self._send(200, b'{"choices": [{"message": {"content": "cut')
            if action == "hang":
                time.sleep(script.hang)
                return self._send(200, b"{}")
            match = _DIALOGUE.search(prompt)
            source = match.group(1) if match else ""
            text = script.answers[marker] if action == "answer" else paraphrase(source)
            answer = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(text), "total_tokens": 0},
            }
            self._send(200, json.dumps(answer, ensure_ascii=False).encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def server():
    script = Script()
    httpd = serve(script)
    script.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield script
    httpd.shutdown()
    httpd.server_close()


def write_config(tmp_path: Path, **augment) -> Path:
    settings = {"api_key_env": KEY_ENV, "rpm": None, "backoff_s": 0.05, "timeout_s": 1.0, "max_retries": 3, **augment}
    config = {
        "model": {"name_or_path": "tiny:llama"},
        "data": {"train": str(SAMPLE / "train.csv"), "dev": str(SAMPLE / "dev.csv"), "test": str(SAMPLE / "test.csv")},
        "augment": settings,
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def jobs_for(config_path: Path, recipe: str, n: int):
    config = load_config(config_path)
    return build_jobs(
        recipe, load_recipe(recipe, config.augment)[0], load_dialogues(SAMPLE / "train.csv"), n, config.augment
    )


def run_cli(config_path, output, *flags, url=None, recipe="paraphrase", n=1, env_key=True, monkeypatch=None):
    if env_key:
        monkeypatch.setenv(KEY_ENV, KEY)
    else:
        monkeypatch.delenv(KEY_ENV, raising=False)
    args = ["augment", str(config_path), "--recipe", recipe, "--n", str(n), "--output", str(output)]
    args += ["--endpoint", url, "--model", "teacher"] if url else []
    result = CliRunner().invoke(app, args + list(flags), catch_exceptions=True)
    return result


def first_line(job) -> str:
    return dialogue_text(job.dialogue).split("\n")[0]


def test_paraphrase_end_to_end_retries_rejections_cache_and_key(server, tmp_path, monkeypatch):
    """Every failure mode the server can script, each counted; a rerun sends nothing; the key is in no byte written.

    Mutations caught: Retry-After ignored (the retry comes < 1 s after the 429); max_retries raised on the client (the
    500 job is retried by openai too: more requests); the cache key without the source (a rerun re-sends); a
    validation check removed (its reason's count is 0)."""
    config = write_config(tmp_path, max_retries=2)
    jobs = jobs_for(config, "paraphrase", 14)
    dev = load_dialogues(SAMPLE / "dev.csv")
    with_mask = next(i for i, j in enumerate(jobs) if masks(dialogue_text(j.dialogue)))
    mask = next(iter(masks(dialogue_text(jobs[with_mask].dialogue))))
    others = [i for i in range(len(jobs)) if i != with_mask]
    plan = dict(
        zip(
            others,
            ["429", "500", "malformed", "hang", "dev", "copy", "han", "long", "preamble", "speaker", "droptag", "fail"],
        )
    )
    plan[with_mask] = "dropmask"
    expected = {}
    for i, kind in plan.items():
        job, marker = jobs[i], first_line(jobs[i])
        good = paraphrase(dialogue_text(job.dialogue))
        lines = good.split("\n")
        if kind in ("429", "500", "malformed", "hang"):
            server.actions[marker] = [kind]
            expected[i] = "accepted"
            continue
        if kind == "fail":
            server.actions[marker] = ["500"] * 3
            expected[i] = "failed"
            continue
        answers = {
            "dev": dialogue_text(dev[0]),
            "copy": dialogue_text(job.dialogue),
            "han": good + "漢字",
            "long": "\n".join(f"{line} {line.split(': ', 1)[1]} {line.split(': ', 1)[1]}" for line in lines),
            "preamble": "다음은 바꿔 쓴 대화입니다.\n" + good,
            "speaker": good + "\n#Person3#: 저도 같이 가요.",
            "droptag": "\n".join(lines[:1] + [lines[1].split(": ", 1)[1]] + lines[2:]),
            "dropmask": good.replace(mask, "비공개", 1),
        }
        server.actions[marker] = ["answer"]
        server.answers[marker] = answers[kind]
        expected[i] = {
            "dev": "leak",
            "copy": "source_copy",
            "han": "foreign_script",
            "long": "length",
            "preamble": "unparseable",
            "speaker": "speakers",
            "droptag": "turns",
            "dropmask": "masks",
        }[kind]
    output = tmp_path / "out" / "aug.csv"
    result = run_cli(config, output, "--concurrency", "3", url=server.url, n=len(jobs), monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "out" / "aug.augment.json").read_text())
    reasons = Counter(v for v in expected.values() if v not in ("accepted",))
    assert summary["rejected"] == {r: reasons[r] for r in summary["rejected"]}
    assert set(summary["rejected"]) == set(reasons)
    assert summary["failed"] == 1
    assert summary["accepted"] == len(jobs) - sum(reasons.values())
    rejects = [json.loads(line) for line in (tmp_path / "out" / "aug.rejects.jsonl").read_text().splitlines()]
    by_fname = {r["fname"]: r for r in rejects}
    for i, reason in expected.items():
        if reason != "accepted":
            assert by_fname[jobs[i].fname]["reason"] == reason
            if reason != "failed":
                assert by_fname[jobs[i].fname]["answer"] == server.answers[first_line(jobs[i])]
    for reason in ("leak", "masks", "turns", "unparseable"):
        assert reason in result.output  # shown live and at the end
    written = load_dialogues(output)  # dialsum's reader takes the output as it is
    assert [d.source for d in written] == [
        f"paraphrase:{jobs[i].dialogue.id}" for i in range(len(jobs)) if expected.get(i, "accepted") == "accepted"
    ]
    # Retry-After: 1 was honoured
    marker_429 = first_line(jobs[[i for i, k in plan.items() if k == "429"][0]])
    times = [r for r in server.log if marker_429 in r["prompt"]]
    assert [r["action"] for r in times] == ["429", "ok"]
    assert times[1]["start"] - times[0]["end"] >= 0.95
    # the failing job: 1 + max_retries attempts, no more (the client's own retries are off)
    marker_fail = first_line(jobs[[i for i, k in plan.items() if k == "fail"][0]])
    assert sum(marker_fail in r["prompt"] for r in server.log) == 3
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.log)

    # a rerun: nothing paid twice (the failed request is the only one sent again), the same file
    before, sent = output.read_bytes(), len(server.log)
    server.actions[marker_fail] = ["500"] * 3
    result2 = run_cli(config, output, "--overwrite", url=server.url, n=len(jobs), monkeypatch=monkeypatch)
    assert result2.exit_code == 0, result2.output
    assert len(server.log) - sent == 3 and all(marker_fail in r["prompt"] for r in server.log[sent:])
    assert output.read_bytes() == before

    # the key: in no byte written, nor in anything printed
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files)
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in result.output + result2.output


def test_rerun_of_a_complete_job_sends_zero_requests(server, tmp_path, monkeypatch):
    """Mutation caught: the cache written after the run instead of per answer, or keyed with a timestamp."""
    config = write_config(tmp_path)
    output = tmp_path / "aug.csv"
    assert run_cli(config, output, url=server.url, n=5, monkeypatch=monkeypatch).exit_code == 0
    sent = len(server.log)
    assert sent == 5
    before = output.read_bytes()
    result = run_cli(config, output, "--overwrite", url=server.url, n=5, monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    assert len(server.log) == sent
    assert output.read_bytes() == before
    assert "cached 5" in result.output
    # a changed sampling setting is another answer: sent again
    result = run_cli(
        config, output, "--overwrite", "--set", "augment.temperature=0.2", url=server.url, n=5, monkeypatch=monkeypatch
    )
    assert result.exit_code == 0 and len(server.log) == sent + 5


def test_concurrency_and_rate_limit_as_the_server_saw_them(server, tmp_path, monkeypatch):
    """Mutations caught: the pool sized by n instead of --concurrency (more in flight); the limiter not awaited."""
    server.delay = 0.3
    config = write_config(tmp_path)
    assert (
        run_cli(
            config, tmp_path / "a" / "aug.csv", "--concurrency", "2", url=server.url, n=6, monkeypatch=monkeypatch
        ).exit_code
        == 0
    )
    assert server.max_in_flight == 2
    server.delay, server.log[:] = 0.0, []
    result = run_cli(
        config,
        tmp_path / "b" / "aug.csv",
        "--concurrency",
        "4",
        "--rpm",
        "300",
        url=server.url,
        n=5,
        monkeypatch=monkeypatch,
    )
    assert result.exit_code == 0, result.output
    starts = sorted(r["start"] for r in server.log)
    assert len(starts) == 5
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 0.2 - 0.02  # 300 rpm: one start each 0.2 s


def test_killed_midway_resumes_to_the_same_file_as_an_uninterrupted_run(server, tmp_path):
    """Mutation caught: answers cached only at the end (the resumed run sends everything again)."""
    server.delay = 0.25
    config = write_config(tmp_path)
    env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(ROOT / "src")}
    args = [
        sys.executable,
        "-m",
        "dialsum.cli",
        "augment",
        str(config),
        "--recipe",
        "paraphrase",
        "--n",
        "8",
        "--endpoint",
        server.url,
        "--model",
        "teacher",
        "--concurrency",
        "1",
    ]
    killed = tmp_path / "killed" / "aug.csv"
    process = subprocess.Popen(
        args + ["--output", str(killed)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while len(server.log) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not killed.exists()
    served_before = len(server.log)
    assert 3 <= served_before < 8
    resumed = subprocess.run(args + ["--output", str(killed)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert len(server.log) - served_before <= 8 - served_before + 1  # at most the one in flight at the kill again
    server.delay = 0.0
    whole = tmp_path / "whole" / "aug.csv"
    assert subprocess.run(args + ["--output", str(whole)], env=env, capture_output=True).returncode == 0
    assert killed.read_bytes() == whole.read_bytes()
    assert KEY not in resumed.stdout + resumed.stderr


def test_a_refused_key_stops_the_run_without_echoing_it(server, tmp_path):
    """The server's 401 message quotes the key (as OpenAI's does): the one-line error must not."""
    config = write_config(tmp_path)
    jobs = jobs_for(config, "paraphrase", 3)
    for job in jobs:
        server.actions[first_line(job)] = ["401"]
    env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(ROOT / "src")}
    args = [
        sys.executable,
        "-m",
        "dialsum.cli",
        "augment",
        str(config),
        "--recipe",
        "paraphrase",
        "--n",
        "3",
        "--endpoint",
        server.url,
        "--model",
        "teacher",
        "--output",
        str(tmp_path / "aug.csv"),
    ]
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "refused the API key" in result.stderr and KEY_ENV in result.stderr
    assert KEY not in result.stdout + result.stderr
    assert not (tmp_path / "aug.csv").exists()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes()


def test_an_error_message_quoting_the_key_is_redacted(server, tmp_path, monkeypatch):
    """A 400 fails its request (no retry) and its message lands in rejects.jsonl with the key masked.
    Mutation caught: `redact` returning its input."""
    config = write_config(tmp_path)
    job = jobs_for(config, "paraphrase", 1)[0]
    server.actions[first_line(job)] = ["400"]
    result = run_cli(config, tmp_path / "aug.csv", url=server.url, n=1, monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    reject = json.loads((tmp_path / "aug.rejects.jsonl").read_text())
    assert reject["reason"] == "failed" and "HTTP 400" in reject["detail"] and "***" in reject["detail"]
    assert len(server.log) == 1
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes()


def test_missing_key_is_one_line_before_any_request(server, tmp_path, monkeypatch):
    config = write_config(tmp_path)
    result = run_cli(config, tmp_path / "aug.csv", url=server.url, n=2, env_key=False, monkeypatch=monkeypatch)
    assert result.exit_code != 0 and KEY_ENV in str(result.exception)
    assert server.log == []


def test_dry_run_prints_the_first_request_and_sends_nothing(server, tmp_path, monkeypatch):
    config = write_config(tmp_path, price_input_per_1m=1.0, price_output_per_1m=2.0)
    output = tmp_path / "aug.csv"
    result = run_cli(
        config, output, "--dry-run", url=server.url, recipe="synthetic", n=4, env_key=False, monkeypatch=monkeypatch
    )
    assert result.exit_code == 0, result.output
    assert server.log == []
    assert "first request" in result.output and "[예시 대화" in result.output
    assert re.search(
        r"4 requests, 0 cached, 4 to send; about [\d,]+ prompt \+ [\d,]+ completion tokens",
        " ".join(result.output.split()),
    )
    assert "estimated cost" in result.output
    assert list(tmp_path.iterdir()) == [config]


def test_synthetic_and_rewrite_summary_recipes(server, tmp_path, monkeypatch):
    """synthetic: JSON answers (a fenced one too) become rows with the drawn topic; rewrite-summary keeps the
    dialogue and replaces the summary."""
    config = write_config(tmp_path)
    jobs = jobs_for(config, "synthetic", 2)
    made = {}
    for job in jobs:
        marker = f"'{job.topic}' 주제로"
        made[job.fname] = {
            "dialogue": paraphrase(dialogue_text(job.examples[0])),
            "summary": f"#Person1#은 #Person2#에게 {job.topic}에 대해 묻는다.",
        }
        server.actions[marker] = ["answer"]
        server.answers[marker] = "```json\n" + json.dumps(made[job.fname], ensure_ascii=False) + "\n```"
    result = run_cli(config, tmp_path / "syn.csv", url=server.url, recipe="synthetic", n=2, monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    rows = load_dialogues(tmp_path / "syn.csv")
    assert [d.topic for d in rows] == [j.topic for j in jobs]
    assert all(d.source.startswith("synthetic:") for d in rows)
    assert [d.references[0] for d in rows] == [made[j.fname]["summary"] for j in jobs]
    jobs = jobs_for(config, "rewrite-summary", 3)
    for job in jobs:
        server.actions[first_line(job)] = ["answer"]
        server.answers[first_line(job)] = job.dialogue.references[0][::-1] + "다."
    server.answers[first_line(jobs[2])] = jobs[2].dialogue.references[0]  # the reference itself: a copy
    result = run_cli(
        config, tmp_path / "sum.csv", url=server.url, recipe="rewrite-summary", n=3, monkeypatch=monkeypatch
    )
    assert result.exit_code == 0, result.output
    rows = load_dialogues(tmp_path / "sum.csv")
    assert [dialogue_text(d) for d in rows] == [dialogue_text(j.dialogue) for j in jobs[:2]]
    assert [d.references[0] for d in rows] == [j.dialogue.references[0][::-1] + "다." for j in jobs[:2]]
    assert json.loads((tmp_path / "sum.augment.json").read_text())["rejected"] == {"source_copy": 1}


def test_speaker_swap_is_an_exact_consistent_permutation(tmp_path, monkeypatch):
    """Every #PersonN# of dialogue and summary is mapped by one bijection (not the identity), all else unchanged.
    Mutation caught: replacing tags one after another (#Person1#->#Person2#, then #Person2#->#Person1#) merges them."""
    config = write_config(tmp_path)
    output = tmp_path / "swap.csv"
    result = run_cli(config, output, recipe="speaker-swap", n=30, env_key=False, monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    sources = {d.id: d for d in load_dialogues(SAMPLE / "train.csv")}
    rows = load_dialogues(output)
    assert len(rows) == 30
    tag = re.compile(r"#Person\d+#")
    for row in rows:
        source = sources[row.source.split(":", 1)[1]]
        for new, old in [(dialogue_text(row), dialogue_text(source)), (row.references[0], source.references[0])]:
            assert tag.split(new) == tag.split(old)
            pairs = set(zip(tag.findall(new), tag.findall(old)))
            mapping = dict(pairs)
            assert len(mapping) == len(pairs) == len(set(mapping.values()))  # one bijection
        both = set(
            zip(
                tag.findall(dialogue_text(row) + row.references[0]),
                tag.findall(dialogue_text(source) + source.references[0]),
            )
        )
        assert len(dict(both)) == len(both) and any(a != b for a, b in both)
    assert speaker_swap(sources[rows[0].source.split(":")[1]], 42) == speaker_swap(
        sources[rows[0].source.split(":")[1]], 42
    )


def test_near_duplicate_index_finds_what_brute_force_finds():
    """The pigeonhole probe misses nothing brute force finds. Mutation caught: probing one gram fewer."""
    import random

    rng = random.Random(0)
    alphabet = "가나다라마바사아자차카타파하"
    docs = ["".join(rng.choice(alphabet) for _ in range(rng.randint(20, 80))) for _ in range(60)]
    index = NgramIndex([(str(i), d) for i, d in enumerate(docs)], 3)
    from dialsum.augment_validate import _grams

    for trial in range(200):
        base = docs[rng.randrange(len(docs))]
        text = "".join(c if rng.random() > 0.15 else rng.choice(alphabet) for c in base)
        threshold = rng.choice([0.3, 0.5, 0.7])
        brute = max(jaccard(_grams(text, 3), _grams(d, 3)) for d in docs)
        score, found = index.nearest(text, threshold)
        assert (found is not None) == (brute >= threshold)
        if found is not None:
            assert score == pytest.approx(brute)


# ---------------------------------------------------------------- training on augmented files


def swap_file(tmp_path: Path, monkeypatch, n: int = 10) -> Path:
    output = tmp_path / "aug" / "swap.csv"
    result = run_cli(write_config(tmp_path), output, recipe="speaker-swap", n=n, env_key=False, monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    return output


def test_data_train_takes_a_list_of_files_and_a_single_string(tmp_path, monkeypatch):
    """Mutation caught: a list read as one path (DataError), or ids shared across files let through."""
    from dialsum.config import config_from_dict
    from dialsum.data import source_counts
    from dialsum.errors import DataError

    swap = swap_file(tmp_path, monkeypatch)
    train = SAMPLE / "train.csv"
    both = load_dialogues([train, swap])
    assert [d.id for d in both] == [d.id for d in load_dialogues(train)] + [d.id for d in load_dialogues(swap)]
    raw = {"model": {"name_or_path": "x"}, "data": {"train": str(train)}}
    assert config_from_dict(raw).data.train == str(train)
    config = config_from_dict(raw, [f"data.train=[{train}, {swap}]"])
    assert config.data.train == [str(train), str(swap)]
    assert len(load_dialogues(config.data.train)) == 50
    with pytest.raises(DataError, match="also in"):
        load_dialogues([train, train])
    assert source_counts([train, swap]) == {str(train): 40, f"{swap} (speaker-swap)": 10}
    skipped = [load_dialogues(swap)[0].id]
    assert source_counts([train, swap], skipped) == {str(train): 40, f"{swap} (speaker-swap)": 9}


def test_train_refuses_an_augmented_file_holding_a_dev_dialogue(tmp_path, monkeypatch):
    """One line naming the file, the row and the dev dialogue, exit 2, no run directory. A clean augmented file, and
    the plain training file (no source column), pass. Mutation caught: the check run on files without a source column
    only / not run at start."""
    import csv

    from dialsum.augment_validate import check_training_leaks
    from dialsum.config import load_config as load

    swap = swap_file(tmp_path, monkeypatch)
    settings = load(write_config(tmp_path)).augment
    check_training_leaks([str(SAMPLE / "train.csv"), str(swap)], str(SAMPLE / "dev.csv"), None, settings)
    dev = load_dialogues(SAMPLE / "dev.csv")
    rows = list(csv.reader(swap.open(encoding="utf-8")))
    rows.append(["leaky-0", dialogue_text(dev[3]), dev[3].references[0], dev[3].topic, "paraphrase:train_1"])
    leaky = tmp_path / "aug" / "leaky.csv"
    with leaky.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    config = {
        "model": {"name_or_path": "tiny:llama"},
        "data": {"train": [str(SAMPLE / "train.csv"), str(leaky)], "dev": str(SAMPLE / "dev.csv")},
    }
    path = tmp_path / "leak.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "dialsum.cli", "train", str(path), "--output-dir", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{leaky} row 11 (fname=leaky-0)" in lines[0] and f"dev.csv:{dev[3].id}" in lines[0]
    assert not run_dir.exists()


@pytest.mark.slow
def test_training_on_train_plus_aug_counts_sources_and_records_sha256(tiny_llama, tmp_path, monkeypatch):
    """summary.json, the console summary and report.md show the examples per source; env.json each file's SHA-256.
    Mutation caught: env.json written without train_files; summary_rows without the sources row."""
    import hashlib

    from dialsum.config import config_from_dict
    from dialsum.report import write_run_report
    from dialsum.train import train

    swap = swap_file(tmp_path, monkeypatch)
    train_csv = SAMPLE / "train.csv"
    config = config_from_dict(
        {
            "model": {"name_or_path": str(tiny_llama)},
            "data": {"train": [str(train_csv), str(swap)]},
            "training": {
                "max_steps": 1,
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 1,
                "max_length": 768,
                "gradient_checkpointing": False,
                "packing": False,
                "save_steps": 100,
            },
        }
    )
    run_dir = train(config, output_dir=tmp_path / "run")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_sources"] == {str(train_csv): 40, f"{swap} (speaker-swap)": 10}
    env = json.loads((run_dir / "env.json").read_text())
    assert [(f["path"], f["sha256"]) for f in env["train_files"]] == [
        (str(p), hashlib.sha256(p.read_bytes()).hexdigest()) for p in (train_csv, swap)
    ]
    report = write_run_report(run_dir).read_text(encoding="utf-8")
    assert f"{swap} (speaker-swap) 10" in report


def test_rejections_are_counted_live_in_the_progress_line(server, tmp_path, monkeypatch):
    """The progress bar's own line carries the counts by reason as answers arrive (not only the end summary).
    Mutation caught: validating only after the last request (the bar ends at 'rejected 0')."""
    import io

    from rich.console import Console

    from dialsum.augment import augment

    config_path = write_config(tmp_path)
    job = jobs_for(config_path, "paraphrase", 2)[0]
    server.actions[first_line(job)] = ["answer"]
    server.answers[first_line(job)] = dialogue_text(load_dialogues(SAMPLE / "dev.csv")[0])
    monkeypatch.setenv(KEY_ENV, KEY)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200)
    augment(load_config(config_path), "paraphrase", 2, tmp_path / "aug.csv", server.url, "teacher", console=console)
    bar = [line for line in screen.getvalue().splitlines() if "2/2" in line]
    assert bar and "rejected 1 (leak 1)" in bar[-1] and "accepted 1" in bar[-1]


def test_the_solar_preset_and_every_recipe_load_and_dry_run_without_a_key(tmp_path, monkeypatch):
    """configs/augment/solar.yaml is a valid config for the real endpoint; each shipped recipe renders."""
    solar = ROOT / "configs" / "augment" / "solar.yaml"
    config = load_config(solar)
    assert config.augment.endpoint == "https://api.upstage.ai/v1" and config.augment.api_key_env == "UPSTAGE_API_KEY"
    assert config.augment.model and config.augment.price_input_per_1m > 0
    for recipe in ("paraphrase", "rewrite-summary", "synthetic"):
        assert load_recipe(recipe, config.augment)[0].name == recipe
    monkeypatch.delenv("UPSTAGE_API_KEY", raising=False)
    args = ["augment", str(solar), "--recipe", "paraphrase", "--n", "3", "--output", str(tmp_path / "aug.csv")]
    args += ["--set", f"data.train={SAMPLE / 'train.csv'}", "--set", f"data.dev={SAMPLE / 'dev.csv'}"]
    args += ["--set", f"data.test={SAMPLE / 'test.csv'}", "--dry-run"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "https://api.upstage.ai/v1" in result.output and "$UPSTAGE_API_KEY" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_keeps_the_answers_in_flight_and_the_rerun_pays_nothing_twice(server, tmp_path):
    """SIGINT mid-run: exit 130, a note to rerun; the request in flight finishes and is cached, so the two runs
    together send each request once. Mutation caught: the pool abandoned without waiting (one answer paid twice)."""
    server.delay = 0.3
    config = write_config(tmp_path)
    env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(ROOT / "src")}
    args = [sys.executable, "-m", "dialsum.cli", "augment", str(config), "--recipe", "paraphrase", "--n", "6"]
    args += ["--endpoint", server.url, "--model", "teacher", "--concurrency", "2", "--output", str(tmp_path / "a.csv")]
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(server.log) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "rerun the same command" in " ".join((out + err).split())
    first = len(server.log)
    assert first < 6
    server.delay = 0.0
    assert subprocess.run(args, env=env, capture_output=True).returncode == 0
    prompts = Counter(r["prompt"] for r in server.log)
    assert len(prompts) == 6 and set(prompts.values()) == {1}


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--recipe", "nope"], "--recipe nope: no recipe file"),
        (["--output-name", "aug.txt"], "unsupported output type"),
        (["--output-name", "aug.json"], "augment writes a competition CSV"),
        (["--no-endpoint"], "no endpoint or model"),
        (["--n", "0"], "--n 0: expected at least 1"),
        (["--recipe", str(ROOT / "configs" / "augment" / "solar.yaml")], "recipe key"),
    ],
)
def test_bad_input_is_one_error_before_anything_is_written(server, tmp_path, monkeypatch, flags, message):
    from dialsum.errors import DialsumError

    config = write_config(tmp_path)
    recipe = flags[1] if flags[0] == "--recipe" else "paraphrase"
    n = int(flags[1]) if flags[0] == "--n" else 2
    output = tmp_path / "out" / (flags[1] if flags[0] == "--output-name" else "aug.csv")
    url = None if flags[0] == "--no-endpoint" else server.url
    result = run_cli(config, output, url=url, recipe=recipe, n=n, monkeypatch=monkeypatch)
    assert isinstance(result.exception, DialsumError) and message in str(result.exception)
    assert not (tmp_path / "out").exists() and server.log == []


def test_kfold_refuses_a_list_of_training_files(tmp_path):
    from dialsum.config import config_from_dict
    from dialsum.errors import ConfigError
    from dialsum.kfold import _prepare

    train = str(SAMPLE / "train.csv")
    config = config_from_dict({"model": {"name_or_path": "x"}, "data": {"train": [train, train]}})
    with pytest.raises(ConfigError, match="kfold splits one training file"):
        _prepare(config, tmp_path / "k", 2, False)
