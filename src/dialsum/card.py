"""The model card of an export (`dialsum export`): README.md in the Hub's format.

YAML metadata the Hub parses (language, base_model, datasets, license, metrics and model-index results with the
scoring scheme named), then what a user needs to reproduce dialsum outside it: the prompt with one rendered example,
the decoding settings, the dev scores with scheme, analyzer and interval, training settings and environment, the
data files' hashes, and a plain-transformers snippet that builds exactly the training prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from dialsum.config import Config
from dialsum.rundir import DEV_SCORES_FILE, ENV_FILE, SUMMARY_FILE

__all__ = ["card_metadata", "model_card", "usage_snippet", "file_sha256"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def card_metadata(config: Config, dev_scores: dict | None, name: str, merged: bool = True):
    """huggingface_hub's ModelCardData: what the Hub indexes. base_model only when the base is a hub id (a local
    path or a tiny model means nothing there); the dev scores as model-index results naming the scheme."""
    from huggingface_hub import EvalResult, ModelCardData

    from dialsum.schemes import LABELS, get_scheme

    base = config.model.name_or_path
    results = []
    if dev_scores:
        scheme = get_scheme(dev_scores.get("scheme", "kiwi"))
        for key, label in scheme.columns():
            value = dev_scores.get(key)
            if value is None:
                continue
            results.append(
                EvalResult(
                    task_type="summarization",
                    task_name="Korean dialogue summarization",
                    dataset_type=(config.data.hub_datasets or ["dialsum-dev"])[0],
                    dataset_name=f"dev ({Path(config.data.dev).name if config.data.dev else 'dev'})",
                    dataset_split="dev",
                    metric_type="rouge" if key.startswith("rouge") or key == "final_score" else key,
                    metric_name=f"{LABELS.get(key, label) if key != scheme.headline else label} (scheme {scheme.name})",
                    metric_value=round(float(value), 4),
                    metric_config=scheme.name,
                )
            )
    return ModelCardData(
        language="ko",
        license=config.model.license or "other",
        base_model=base if _HUB_ID.match(base) else None,
        datasets=list(config.data.hub_datasets) or None,
        metrics=["rouge"],
        library_name="transformers" if merged else "peft",
        pipeline_tag="text-generation" if config.model.kind == "causal" else "summarization",
        tags=["dialsum", "summarization", "korean", "dialogue-summarization"],
        model_name=name,
        eval_results=results or None,
        dialsum_scheme=(dev_scores or {}).get("scheme", config.evaluation.scheme),
    )


def _example_prompt(tokenizer, config: Config) -> tuple[str, str | None, str]:
    """(dialogue text, topic, prompt as the model sees it) of the first dev (else train) dialogue."""
    from dialsum.data import load_dialogues
    from dialsum.encode import render_prompt
    from dialsum.prompt import build_messages, seq2seq_source

    for path in (config.data.dev, config.data.train):
        if path and Path(path).is_file():
            dialogue = load_dialogues(path)[0]
            break
    else:
        return "", None, ""
    lines = [f"{t.speaker}: {t.utterance}" for t in dialogue.turns]
    text = "\n".join(([dialogue.preamble] if dialogue.preamble else []) + lines)
    if config.model.kind != "causal":
        return text, dialogue.topic, seq2seq_source(dialogue, config.prompt)
    return text, dialogue.topic, render_prompt(tokenizer, build_messages(dialogue, config.prompt))


def usage_snippet(config: Config, tokenizer, repo: str) -> str:
    """Plain transformers, no dialsum: the training prompt built exactly (conversation lines, question with the
    topic policy, system prompt, chat template with dialsum's pinned date), decoded by generation_config.json."""
    from dialsum.encode import PINNED_DATE

    p = config.prompt
    speaker = {
        "tag": "speaker",
        "korean": 're.sub(r"#Person(\\d+)#", r"화자\\1", speaker)',
        "prefixed": '"화자" + speaker',
    }[p.speaker_style]
    topic_line = (
        "    topic = DEFAULT_TOPIC  # prompt.topic=never: the model was trained on the default topic"
        if p.topic == "never"
        else '    topic = (topic or "").strip() or DEFAULT_TOPIC'
    )
    if tokenizer.chat_template:
        render = (
            "    text = tokenizer.apply_chat_template(\n"
            f"        messages, tokenize=False, add_generation_prompt=True, date_string={PINNED_DATE!r}\n"
            "    )"
        )
    else:
        render = (
            '    text = (tokenizer.bos_token or "") + "".join(\n'
            "        f\"### {m['role'].capitalize()}:\\n{m['content']}\\n\\n\" for m in messages\n"
            '    ) + "### Assistant:\\n"'
        )
    system = '    messages = [{"role": "system", "content": SYSTEM}] if SYSTEM else []\n'
    return f'''import re

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = {repo!r}
SYSTEM = {p.system!r}
QUESTION = {p.question!r}
CONVERSATION_HEADER, QUESTION_HEADER = {p.conversation_header!r}, {p.question_header!r}
DEFAULT_TOPIC = {p.default_topic!r}
TAG = re.compile(r"^\\s*(#Person\\d+#)\\s*:")

tokenizer = AutoTokenizer.from_pretrained(REPO)
model = AutoModelForCausalLM.from_pretrained(REPO).eval()


def conversation(dialogue: str) -> str:
    """`#PersonN#: utterance` lines, as dialsum reads them (continuation lines stay with their turn)."""
    preamble, turns = [], []
    for line in dialogue.replace("\\r\\n", "\\n").replace("\\r", "\\n").split("\\n"):
        match = TAG.match(line)
        if match:
            turns.append([match.group(1), [line[match.end():].strip()]])
        elif line.strip():
            (turns[-1][1] if turns else preamble).append(line.strip())
    lines = ["\\n".join(preamble)] if preamble else []
    for speaker, parts in turns:
        lines.append(f"{{{speaker}}}: " + "\\n".join(part for part in parts if part))
    return "\\n".join(lines)


def prompt(dialogue: str, topic: str | None = None) -> str:
    """The training prompt: system, the conversation and the question, through the chat template."""
{topic_line}
    question = QUESTION.format(topic=topic)
    user = f"{{CONVERSATION_HEADER}}\\n{{conversation(dialogue)}}\\n\\n{{QUESTION_HEADER}}\\n{{question}}"
{system}    messages.append({{"role": "user", "content": user}})
{render}
    return text


def summarize(dialogue: str, topic: str | None = None) -> str:
    inputs = tokenizer(prompt(dialogue, topic), add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs)  # generation_config.json: dialsum's decoding settings and stop tokens
    summary = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return " ".join(summary.split())
'''


def _decoding_rows(generation_config, tokenizer, config: Config) -> list[list[str]]:
    g = config.generation
    eos = generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    rows = [
        ["max_new_tokens", str(generation_config.max_new_tokens)],
        ["num_beams", str(generation_config.num_beams)],
        ["do_sample", str(generation_config.do_sample)],
    ]
    if generation_config.do_sample:
        rows += [["temperature", str(g.temperature)], ["top_p", str(g.top_p)]]
    rows += [
        ["repetition_penalty", str(generation_config.repetition_penalty)],
        ["stop tokens (eos_token_id)", ", ".join(f"{i} {tokenizer.convert_ids_to_tokens(i)}" for i in eos)],
        [
            "suppress_tokens",
            f"{len(generation_config.suppress_tokens or [])} tokens of {', '.join(g.forbidden_scripts)}"
            if generation_config.suppress_tokens
            else "none",
        ],
        ["dialsum only: byte-fragment script ban", "on" if g.suppress_foreign_scripts else "off"],
        ["dialsum only: n-gram ban sparing #PersonN# tags", str(g.no_repeat_ngram_size or "off")],
        ["dialsum only: trimming", f"turns cut from the end to fit {config.training.max_length} tokens"],
    ]
    return rows


def model_card(
    run_dir: Path, config: Config, tokenizer, generation_config, merged: bool, parity: dict | None, repo: str = "."
) -> str:
    """README.md of an export."""
    from huggingface_hub import ModelCard

    from dialsum.report import _dev_scores_section, md_table
    from dialsum.rundir import summary_rows

    name = Path(run_dir).resolve().name
    dev_scores = _read_json(run_dir / DEV_SCORES_FILE) or None
    env = _read_json(run_dir / ENV_FILE)
    summary = _read_json(run_dir / SUMMARY_FILE)
    data = card_metadata(config, dev_scores, name, merged=merged)
    example, topic, rendered = _example_prompt(tokenizer, config)
    base = config.model.name_or_path
    what = "the LoRA adapter merged into the base weights" if merged and config.lora.enabled else "the full weights"
    if not merged:
        what = f"the LoRA adapter only (r={config.lora.r}); load it on the base `{base}` with PEFT"
    t, lora = config.training, config.lora
    training = [
        ["base model", f"`{base}`" + (f" @ {config.model.revision}" if config.model.revision else "")],
        [
            "method",
            ("QLoRA" if lora.load_in_4bit else "LoRA") + f" r={lora.r}, alpha={lora.alpha}, dropout="
            f"{lora.dropout}, targets {lora.target_modules}"
            if lora.enabled
            else "full fine-tuning",
        ],
        ["learning rate / schedule", f"{t.learning_rate} / {t.lr_scheduler_type}, warmup ratio {t.warmup_ratio}"],
        ["batch", f"{t.per_device_train_batch_size} x {t.gradient_accumulation_steps} accumulation per device"],
        ["max_length / packing", f"{t.max_length} / {t.packing}"],
        ["max_steps / num_train_epochs (config)", f"{t.max_steps} / {t.num_train_epochs}"],
        ["seed", str(t.seed)],
        *summary_rows(summary),
    ]
    env_rows = [
        [key, str(env[key])]
        for key in (
            "python",
            "torch",
            "transformers",
            "trl",
            "peft",
            "dialsum",
            "device",
            "world_size",
            "distributed",
            "git_commit",
            "started",
        )
        if key in env
    ]
    data_rows = []
    for split in ("train", "dev", "test"):
        path = getattr(config.data, split)
        if path and Path(path).is_file():
            data_rows.append([split, f"`{Path(path).name}`", f"`{file_sha256(path)}`"])
        elif path:
            data_rows.append([split, f"`{Path(path).name}`", "(not readable at export time)"])
    lines = [
        f"# {name}",
        "",
        f"A Korean dialogue summarizer fine-tuned with dialsum from `{base}`: {what}. "
        f"Weights in safetensors; tokenizer and chat template included; `generation_config.json` decodes as dialsum "
        f"did.",
        "",
        "## Prompt format",
        "",
        f"System prompt: `{config.prompt.system}`" if config.prompt.system else "No system prompt.",
        "",
        "User message: the conversation, one `speaker: utterance` line per turn, then the question "
        f"`{config.prompt.question}` with the topic policy `{config.prompt.topic}` (default topic "
        f"`{config.prompt.default_topic}`), through the chat template with `add_generation_prompt=True`. "
        "The summary is the assistant's turn; it ends with the turn closer.",
        "",
        "One rendered example (the first dev dialogue):",
        "",
        "```text",
        rendered.rstrip("\n"),
        "```",
        "",
        "## Decoding",
        "",
        md_table(["setting", "value"], _decoding_rows(generation_config, tokenizer, config)),
        "",
        "The rows marked *dialsum only* run in `dialsum predict` / `dialsum serve`, not in plain `generate()`.",
        "",
        "## Dev scores",
        "",
        *_dev_scores_section(dev_scores),
        "",
    ]
    if parity:
        for what_, check in parity.items():
            lines.append(
                f"Export parity ({what_}): on dev dialogues {', '.join(check['dialogues'])} the exported model gives "
                f"the run's greedy summaries; max |logit difference| {check['max_abs_logit_difference']:.2e} "
                f"(tolerance {check['tolerance']}, {check['dtype']})."
            )
        lines.append("")
    lines += [
        "## Training",
        "",
        md_table(["setting", "value"], training),
        "",
        "Environment (`env.json`):",
        "",
        md_table(["", "value"], env_rows) if env_rows else "No env.json in the run.",
        "",
        "## Data",
        "",
        md_table(["split", "file", "sha256"], data_rows) if data_rows else "No data files named in the config.",
        "",
        "## Usage",
        "",
        *(
            [
                "Plain transformers, no dialsum; this builds exactly the prompt the model was trained on "
                f"(dialsum also trims a dialogue longer than {config.training.max_length} tokens by its last turns):",
                "",
                "```python",
                usage_snippet(config, tokenizer, repo).rstrip("\n"),
                "",
                f"print(summarize({example!r}, topic={topic!r}))",
                "```",
            ]
            if config.model.kind == "causal"
            else [
                "An encoder-decoder model: its source is the conversation lines with the speaker tags dialsum added "
                "as tokens at training; `dialsum predict` builds it (a plain-transformers snippet is for decoder-only "
                "exports)."
            ]
        ),
        "",
        "With dialsum: `dialsum serve THIS_FOLDER` (an OpenAI-compatible server and a web page) or "
        "`dialsum predict --model THIS_FOLDER --data test.csv --output predictions.csv`.",
        "",
    ]
    card = ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(lines))
    return str(card)
