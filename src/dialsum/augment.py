"""`dialsum augment`: more training data from a teacher model behind any OpenAI-compatible endpoint (Upstage Solar,
`vllm serve`), with every answer validated (augment_validate), cached (augment_client) and counted.

A job is N requests built deterministically from the training file, the recipe and augment.seed, and written in job
order: a rerun, or a run after a kill, reads every answer it already paid for from the cache beside the output and
ends with the same file. Recipes are YAML templates in configs/augment/; `speaker-swap` is local and sends nothing.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console

from dialsum.augment_client import AnswerCache, FatalRequestError, Limiter, RequestFailed, cache_key, redact, request
from dialsum.augment_validate import REASONS, Candidate, dialogue_text, leak_index, speaker_swap, validate
from dialsum.config import Config
from dialsum.data import Dialogue, data_files, data_format, load_dialogues
from dialsum.errors import ConfigError, DialsumError
from dialsum.rundir import augment_files
from dialsum.writer import OutputPlan, write_dict_rows, write_json, write_text

__all__ = ["LOCAL_RECIPES", "Recipe", "augment", "load_recipe"]

LOCAL_RECIPES = ("speaker-swap",)
REPO_RECIPES = Path(__file__).parents[2] / "configs" / "augment"  # a source checkout's recipes
CHARS_PER_TOKEN = 2.0  # a rough rate for Korean text under the usual BPE vocabularies (dry-run estimates only)
OUTPUT_COLUMNS = ["fname", "dialogue", "summary", "topic", "source"]
_PLACEHOLDER = re.compile(r"\{(dialogue|summary|topic|speakers|examples)\}")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?|\n?```\s*$")


class AugmentError(DialsumError):
    """A flag, recipe or endpoint that `dialsum augment` cannot work with."""


class Recipe(BaseModel):
    """A recipe file (configs/augment/<name>.yaml): the prompt templates and what the answer holds."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="The recipe's name, written into the output's source column.")
    description: str = Field("", description="What the recipe makes.")
    answer: Literal["dialogue", "summary", "dialogue_summary"] = Field(
        description="What the answer is: a paraphrased dialogue, a summary, or a JSON {dialogue, summary}."
    )
    system: str = Field("", description="System message template.")
    user: str = Field(description="User message template.")
    example: str = Field("", description="synthetic: the template of one few-shot example ({examples}).")


def load_recipe(name: str, settings) -> tuple[Recipe, Path]:
    """A recipe by name (in augment.recipe_dir, then the repository's configs/augment) or by path."""
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) else []
    candidates += [Path(settings.recipe_dir) / f"{name}.yaml", REPO_RECIPES / f"{name}.yaml"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise AugmentError(
            f"--recipe {name}: no recipe file {candidates[-2] if len(candidates) > 1 else candidates[0]} "
            f"(recipes: paraphrase, rewrite-summary, synthetic, speaker-swap)"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Recipe.model_validate(raw), path
    except yaml.YAMLError as error:
        raise AugmentError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise AugmentError(f"{path}: recipe key '{key}': {first['msg']}") from None


def _render(template: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


@dataclass
class Job:
    fname: str
    source_key: str  # the source id and variant: part of the cache key
    source: str  # the output's source column
    messages: list[dict]
    topic: str | None
    dialogue: Dialogue | None = None  # the source dialogue (None for synthetic)
    examples: list[Dialogue] = field(default_factory=list)


def _values(d: Dialogue) -> dict[str, str]:
    speakers = ", ".join(dict.fromkeys(t.speaker for t in d.turns))
    summary = d.references[0] if d.references else ""
    return {"dialogue": dialogue_text(d), "summary": summary, "topic": d.topic or "대화", "speakers": speakers}


def _messages(recipe: Recipe, values: dict[str, str]) -> list[dict]:
    messages = [{"role": "system", "content": _render(recipe.system, values)}] if recipe.system else []
    return messages + [{"role": "user", "content": _render(recipe.user, values)}]


def build_jobs(name: str, recipe: Recipe | None, dialogues: list[Dialogue], n: int, settings) -> list[Job]:
    """N jobs, the same for the same inputs and seed: sources sampled without replacement (cycled, as new
    variants, when N exceeds them); synthetic topics drawn at their training frequency."""
    rng = random.Random(settings.seed)
    labelled = [d for d in dialogues if d.references]
    if name == "synthetic" or (recipe is not None and recipe.answer == "dialogue_summary"):
        topics = Counter(d.topic for d in labelled if d.topic)
        if not topics:
            raise AugmentError("--recipe synthetic: the training file has no topics to draw from")
        names, weights = list(topics), list(topics.values())
        jobs = []
        for i in range(n):
            topic = rng.choices(names, weights)[0]
            same = [d for d in labelled if d.topic == topic]
            pool = rng.sample(same, min(settings.few_shot, len(same)))
            others = [d for d in labelled if d.topic != topic]
            pool += rng.sample(others, min(settings.few_shot - len(pool), len(others)))
            examples = "\n\n".join(_render(recipe.example, _values(d)) for d in pool)
            messages = _messages(recipe, {"topic": topic, "examples": examples})
            sources = "+".join(d.id for d in pool)
            jobs.append(Job(f"{name}-{i}", f"{i}", f"{name}:{sources}", messages, topic, None, pool))
        return jobs
    eligible = labelled
    if name in LOCAL_RECIPES:
        eligible = [d for d in labelled if speaker_swap(d, settings.seed) is not None]
    if not eligible:
        need = "a summary and two people" if recipe is None else "a summary"
        raise AugmentError(f"--recipe {name}: no training dialogue with {need}")
    order = rng.sample(eligible, len(eligible))
    jobs = []
    for i in range(n):
        d, variant = order[i % len(order)], i // len(order)
        messages = _messages(recipe, _values(d)) if recipe is not None else []
        jobs.append(Job(f"{d.id}-{name}-{variant}", f"{d.id}#{variant}", f"{name}:{d.id}", messages, d.topic, d))
    return jobs


def _parse_answer(recipe: Recipe, job: Job, text: str) -> Candidate | None:
    body = _FENCE.sub("", text.strip()).strip()
    if recipe.answer == "dialogue":
        summary = job.dialogue.references[0]
        return Candidate(job.fname, body, summary, job.topic, job.source)
    if recipe.answer == "summary":
        return Candidate(job.fname, dialogue_text(job.dialogue), " ".join(body.split()), job.topic, job.source)
    start, end = body.find("{"), body.rfind("}")
    try:
        parsed = json.loads(body[start : end + 1]) if start >= 0 else None
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or not all(isinstance(parsed.get(k), str) for k in ("dialogue", "summary")):
        return None
    return Candidate(job.fname, parsed["dialogue"].strip(), parsed["summary"].strip(), job.topic, job.source)


@dataclass
class Tally:
    """What the progress line and the end summary show."""

    total: int = 0
    accepted: int = 0
    cached: int = 0
    failed: int = 0
    rejected: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0  # sent by this run (paid)
    completion_tokens: int = 0
    cached_tokens: int = 0  # the tokens of cached answers (paid earlier, not again)

    def line(self) -> str:
        reasons = ", ".join(f"{r} {self.rejected[r]}" for r in REASONS if self.rejected[r] and r != "failed")
        rejected = sum(v for r, v in self.rejected.items() if r != "failed")
        return (
            f"accepted {self.accepted} · rejected {rejected}{f' ({reasons})' if reasons else ''} · cached "
            f"{self.cached} · failed {self.failed} · tokens {self.prompt_tokens + self.completion_tokens:,}"
        )


def _cost(settings, prompt_tokens: float, completion_tokens: float) -> float:
    return (prompt_tokens * settings.price_input_per_1m + completion_tokens * settings.price_output_per_1m) / 1e6


def augment(
    config: Config,
    recipe_name: str,
    n: int,
    output: str | Path,
    endpoint: str | None = None,
    model: str | None = None,
    api_key_env: str | None = None,
    concurrency: int | None = None,
    rpm: float | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> dict:
    """Run one augmentation job; returns the summary written beside the output (`<output>.augment.json`)."""
    console = console or Console(stderr=True)
    settings = config.augment
    endpoint, model = endpoint or settings.endpoint, model or settings.model
    key_env = api_key_env or settings.api_key_env
    concurrency, rpm = concurrency or settings.concurrency, rpm if rpm is not None else settings.rpm
    if n < 1:
        raise AugmentError(f"--n {n}: expected at least 1")
    if concurrency < 1 or (rpm is not None and rpm <= 0):
        raise AugmentError("--concurrency must be >= 1 and --rpm > 0")
    local = recipe_name in LOCAL_RECIPES
    recipe, recipe_path = (None, None) if local else load_recipe(recipe_name, settings)
    recipe_name = recipe.name if recipe is not None else recipe_name  # `--recipe my/file.yaml`: the file's name
    if not local and (not endpoint or not model):
        raise AugmentError("no endpoint or model: pass --endpoint URL and --model NAME, or set augment.endpoint/model")
    if config.data.train is None:
        raise ConfigError("data.train is not set: augment draws its sources from the training file")
    output = Path(output)
    if data_format(output, "output") != "csv":
        raise AugmentError(f"--output {output}: augment writes a competition CSV (.csv)")
    cache_path, rejects_path, summary_path = augment_files(output)
    inputs = [*data_files(config.data.train), config.data.dev, config.data.test, recipe_path, cache_path]
    plan = OutputPlan(inputs=inputs, overwrite=overwrite)
    plan.file(output)
    if not dry_run:
        plan.file(rejects_path, "--output (rejects)")
        plan.file(summary_path, "--output (summary)")
    dialogues = load_dialogues(data_files(config.data.train))
    jobs = build_jobs(recipe_name, recipe, dialogues, n, settings)
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p, "max_tokens": settings.max_tokens}
    keys = [cache_key(recipe_name, j.messages, model or "", sampling, j.source_key) for j in jobs]
    tally = Tally(total=len(jobs))
    cache = AnswerCache(cache_path) if not local and (not dry_run or cache_path.is_file()) else None
    try:
        if dry_run:
            return _dry_run(console, jobs, keys, cache, recipe, endpoint, model, sampling, key_env, settings)
        index = leak_index([config.data.dev, config.data.test], settings.ngram)
        if not len(index):
            console.print("[yellow]augment:[/] data.dev and data.test are not set: no leak check against them")
        verdicts: dict[int, tuple[dict | None, dict | None]] = {}

        def judge(i: int, answer) -> None:  # in the main thread, as each answer arrives: the counts are live
            verdicts[i] = _judge(config, recipe, jobs[i], answer, index, tally)

        if local:
            for i in range(len(jobs)):
                judge(i, None)
        else:
            target = Target(endpoint, model, sampling, key_env, concurrency, rpm)
            _collect(console, recipe_name, jobs, keys, cache, target, settings, tally, judge)
        return _finish(
            console,
            config,
            recipe_name,
            jobs,
            verdicts,
            output,
            rejects_path,
            summary_path,
            tally,
            {"endpoint": endpoint, "model": model, "sampling": sampling, "concurrency": concurrency, "rpm": rpm},
        )
    finally:
        if cache is not None:
            cache.close()


def _dry_run(console, jobs, keys, cache, recipe, endpoint, model, sampling, key_env, settings) -> dict:
    if recipe is None:
        console.print(f"dry run: {len(jobs)} local speaker swaps, no request")
        return {"requests": 0}
    missing = [j for j, k in zip(jobs, keys) if cache is None or cache.get(k) is None]
    first = {"endpoint": endpoint, "model": model, "messages": jobs[0].messages, **sampling}
    console.print("first request:")
    console.print_json(json.dumps(first, ensure_ascii=False))
    prompt = sum(sum(len(m["content"]) for m in j.messages) for j in missing) / CHARS_PER_TOKEN

    def expected(job: Job) -> int:  # an answer about as long as what it replaces
        values = _values(job.dialogue or job.examples[0])
        dialogue = len(values["dialogue"]) if recipe.answer != "summary" else 0
        return dialogue + (len(values["summary"]) if recipe.answer != "dialogue" else 0)

    completion = sum(expected(j) for j in missing) / CHARS_PER_TOKEN
    cost = _cost(settings, prompt, completion)
    console.print(
        f"dry run: {len(jobs)} requests, {len(jobs) - len(missing)} cached, {len(missing)} to send; about "
        f"{prompt:,.0f} prompt + {completion:,.0f} completion tokens (~{CHARS_PER_TOKEN:g} characters a token), "
        f"estimated cost {cost:.4f} {settings.currency}; key from ${key_env}; nothing sent"
    )
    return {"requests": len(missing), "prompt_tokens": int(prompt), "completion_tokens": int(completion), "cost": cost}


@dataclass
class Target:
    """Where and how requests go."""

    endpoint: str
    model: str
    sampling: dict
    key_env: str
    concurrency: int
    rpm: float | None


def _collect(console, name, jobs, keys, cache, target: Target, settings, tally, judge) -> None:
    """Every job's answer, handed to `judge(i, answer)`: from the cache, else requested (K in flight, under the rpm
    limit) and cached at once. A failed request is handed over as its error message (str)."""
    import openai
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    todo, new = [], 0
    for i, key in enumerate(keys):
        cached = cache.get(key)
        if cached is not None:
            judge(i, cached)
            tally.cached += 1
            tally.cached_tokens += cached.prompt_tokens + cached.completion_tokens
        else:
            todo.append(i)
    if not todo:
        return
    endpoint, model, sampling, key_env = target.endpoint, target.model, target.sampling, target.key_env
    secret = os.environ.get(key_env)
    if not secret:
        raise AugmentError(f"the API key environment variable ${key_env} is not set (pass --api-key-env VAR)")
    client = openai.OpenAI(base_url=endpoint, api_key=secret, max_retries=0, timeout=settings.timeout_s)
    limiter, stop, lock = Limiter(target.rpm), threading.Event(), threading.Lock()
    progress = Progress(
        TextColumn("augment"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    )

    def log(message: str) -> None:
        progress.console.print(f"[yellow]retry:[/] {redact(message, secret)}")

    def one(i: int):
        job = jobs[i]
        answer = request(client, model, job.messages, sampling, settings, limiter, stop, secret, log)
        cache.put(keys[i], name, model, job.source_key, answer)
        return answer

    pool = ThreadPoolExecutor(max_workers=target.concurrency)
    try:
        with progress:
            task = progress.add_task(tally.line(), total=len(jobs), completed=tally.cached)
            futures = {pool.submit(one, i): i for i in todo}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    answer = future.result()
                    with lock:
                        tally.prompt_tokens += answer.prompt_tokens
                        tally.completion_tokens += answer.completion_tokens
                    new += 1
                    judge(i, answer)
                except RequestFailed as error:
                    tally.failed += 1
                    judge(i, redact(str(error), secret))
                progress.update(task, advance=1, description=tally.line())
    except FatalRequestError as error:
        stop.set()
        raise FatalRequestError(f"{endpoint}: {redact(str(error), secret)} (key from ${key_env})") from None
    except BaseException:
        stop.set()
        console.print(
            f"interrupted: {new} new answer(s) are cached in {cache.path}; rerun the same command to send only the rest"
        )
        raise
    finally:
        # Requests already sent finish (bounded by augment.timeout_s) and are cached: they are paid for. Queued ones
        # are cancelled; a second Ctrl-C abandons the wait.
        pool.shutdown(wait=True, cancel_futures=True)
        client.close()


def _judge(config, recipe, job: Job, answer, index, tally) -> tuple[dict | None, dict | None]:
    """(output row, None) for a kept example, (None, reject record) otherwise; counted in `tally`."""
    raw = None
    if recipe is None:
        _, text, summary = speaker_swap(job.dialogue, config.augment.seed, int(job.source_key.rsplit("#", 1)[1]))
        candidate, kind, copies = Candidate(job.fname, text, summary, job.topic, job.source), "swap", []
    elif isinstance(answer, str):
        tally.rejected["failed"] += 1
        return None, {"fname": job.fname, "source": job.source, "reason": "failed", "detail": answer}
    else:
        raw = answer.text
        candidate, kind = _parse_answer(recipe, job, raw), recipe.answer
        copies = [dialogue_text(d) for d in ([job.dialogue] if job.dialogue else job.examples)]
    reference = None
    if job.examples:
        reference = sum(len(dialogue_text(d)) for d in job.examples) // len(job.examples)
    scripts = config.generation.forbidden_scripts
    reason = "unparseable" if candidate is None else None
    reason = reason or validate(candidate, kind, job.dialogue, index, config.augment, scripts, reference, copies)
    if reason:
        tally.rejected[reason] += 1
        return None, {"fname": job.fname, "source": job.source, "reason": reason, "answer": raw}
    tally.accepted += 1
    return {c: getattr(candidate, c) or "" for c in OUTPUT_COLUMNS}, None


def _finish(console, config, name, jobs, verdicts, output, rejects_path, summary_path, tally, meta):
    """Write the kept examples and the rejects in job order (a resumed run ends with the same files), and the
    summary."""
    rows = [verdicts[i][0] for i in range(len(jobs)) if verdicts[i][0] is not None]
    rejects = [verdicts[i][1] for i in range(len(jobs)) if verdicts[i][1] is not None]
    write_dict_rows(output, rows, OUTPUT_COLUMNS)
    if rows:
        load_dialogues(output)  # what was written reads back with dialsum's own reader
    write_text(rejects_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
    s = config.augment
    cost = _cost(s, tally.prompt_tokens, tally.completion_tokens)
    summary = {
        "recipe": name,
        **meta,
        "requested": tally.total,
        "accepted": tally.accepted,
        "cached": tally.cached,
        "failed": tally.failed,
        "rejected": {r: tally.rejected[r] for r in REASONS if tally.rejected[r]},
        "prompt_tokens": tally.prompt_tokens,
        "completion_tokens": tally.completion_tokens,
        "cached_tokens": tally.cached_tokens,
        "cost": round(cost, 6),
        "currency": s.currency,
        "output": str(output),
        "rejects": str(rejects_path),
    }
    write_json(summary_path, summary)
    console.print(f"augment {name}: {tally.line()}")
    console.print(
        f"wrote {len(rows)} example(s) to {output}, {len(rejects)} reject(s) to {rejects_path}; cost of this run "
        f"{cost:.4f} {s.currency} ({tally.prompt_tokens:,} prompt + {tally.completion_tokens:,} completion tokens; "
        f"{tally.cached_tokens:,} tokens came from the cache)"
    )
    return summary
