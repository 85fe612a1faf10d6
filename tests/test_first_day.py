"""What a new user trips on first (issue 19): model lookup by name, inspect with a preset, tables at 80 columns."""

from __future__ import annotations

import io
import shutil

import pytest
from rich.console import Console

from conftest import SAMPLE
from dialsum.config import config_from_dict
from dialsum.errors import ConfigError


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_a_hub_id_resolves_to_a_folder_named_like_it_under_the_model_dirs(tmp_path, monkeypatch, offline, tiny_llama):
    """Mutation caught: the lookup of $DIALSUM_MODEL_DIRS left in plan.py only (inspect and predict never find it)."""
    from dialsum.models import resolve_inference_source, resolve_model_path

    shutil.copytree(tiny_llama, tmp_path / "models" / "tiny-korean-llama")
    monkeypatch.setenv("DIALSUM_MODEL_DIRS", str(tmp_path / "models"))
    found = resolve_model_path("Someone/Tiny-Korean-Llama")
    assert found == str(tmp_path / "models" / "tiny-korean-llama")
    # predict and screen: the same lookup, weights required
    source = resolve_inference_source("Someone/Tiny-Korean-Llama", what="--models")
    assert source.model_dir == found and source.config.model.name_or_path == found


def test_a_weightless_folder_serves_the_tokenizer_not_the_weights(tmp_path, monkeypatch, offline, tiny_llama):
    from dialsum.models import resolve_model_path

    folder = tmp_path / "models" / "tok-only"
    folder.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, folder / name)
    monkeypatch.setenv("DIALSUM_MODEL_DIRS", str(tmp_path / "models"))
    assert resolve_model_path("org/tok-only") == str(folder)  # inspect, plan: config and tokenizer suffice
    with pytest.raises(ConfigError, match=r"no weights.*--model DIR.*\$DIALSUM_MODEL_DIRS"):
        resolve_model_path("org/tok-only", weights=True)


def test_an_unreachable_hub_id_offline_names_model_and_the_model_dirs(tmp_path, monkeypatch, offline):
    """Mutation caught: the hub's own 'couldn't connect to huggingface.co' passed through, with no way out named."""
    from dialsum.models import load_tokenizer, resolve_inference_source

    monkeypatch.setenv("DIALSUM_MODEL_DIRS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    config = config_from_dict({"model": {"name_or_path": "nobody/no-such-model-19"}})
    with pytest.raises(ConfigError) as error:
        load_tokenizer(config.model.name_or_path, config)
    message = str(error.value)
    assert message.startswith("model.name_or_path=nobody/no-such-model-19: ")
    assert "offline" in message and "--model DIR" in message and "no-such-model-19 under $DIALSUM_MODEL_DIRS" in message
    assert "huggingface.co" not in message
    with pytest.raises(ConfigError, match=r"^--model nobody/x: .*offline.*pass a local folder as --model"):
        resolve_inference_source("nobody/x")


@pytest.mark.parametrize("name", ["./no-such-dir", "/nonexistent/model", "runs/no-such-run", "../a/b/c"])
def test_a_local_path_that_is_not_there_says_no_such_directory(name, tmp_path, monkeypatch, offline):
    """Mutation caught: a missing run directory reported as a hub failure ('cannot read the model's config.json')."""
    from dialsum.models import resolve_inference_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match=rf"^--model {name}: no such directory$"):
        resolve_inference_source(name)


def test_inspect_of_a_preset_reads_only_the_training_file(tmp_path, monkeypatch, offline, tiny_llama):
    """The preset names data/test.csv and a hub id; with --set data.train=dev.csv and the model in
    $DIALSUM_MODEL_DIRS, inspect runs. Mutation caught: prompt.topic=auto reading data.test unconditionally →
    'data/test.csv: file not found'."""
    from dialsum.inspection import inspect_data

    shutil.copytree(tiny_llama, tmp_path / "models" / "tiny-llama-19")
    monkeypatch.setenv("DIALSUM_MODEL_DIRS", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    config = config_from_dict(
        {
            "model": {"name_or_path": "Org/tiny-llama-19"},
            "data": {"train": "data/train.csv", "dev": "data/dev.csv", "test": "data/test.csv"},
        },
        [f"data.train={SAMPLE / 'train.csv'}"],
    )
    out = io.StringIO()
    result = inspect_data(config, n=1, console=Console(file=out, width=80))
    assert result["encoded"] > 0
    assert "data.test data/test.csv not found" in " ".join(out.getvalue().split())
    stats = out.getvalue().split("dataset:", 1)[1]  # the statistics table reads at 80 columns: nothing cut
    assert "…" not in stats and all(len(line) <= 80 for line in stats.splitlines())
    assert "padding waste, packed rows" in " ".join(stats.replace("│", " ").split())


# ---------------------------------------------------------------- 80 columns


def _words_intact(text: str, output: str, width: int = 80) -> None:
    lines = output.splitlines()
    assert all(len(line.rstrip()) <= width for line in lines), max(lines, key=len)
    assert "…" not in output
    flat = set(" ".join(lines).split())
    broken = [word for word in text.split() if word not in flat]
    assert not broken, f"words broken or cut at {width} columns: {broken[:5]}"


def test_config_keys_at_80_columns_break_no_word():
    """Mutation caught: the four-column table at 80 columns ('descriptio n', a 10-character description column)."""
    from dialsum.cli import print_config_keys
    from dialsum.config import config_fields

    rows = config_fields()
    out = io.StringIO()
    print_config_keys(rows, Console(file=out, width=80))
    output = out.getvalue()
    for row in rows:
        _words_intact(row["key"] + " " + row["description"], output)
    assert len(output.splitlines()) < 5 * len(rows)
    wide = io.StringIO()
    print_config_keys(rows, Console(file=wide, width=160))
    assert "┃ description" in wide.getvalue() and "…" not in wide.getvalue()


def test_plan_tables_at_80_columns_show_every_header_in_full(tiny_llama):
    """Mutation caught: the ten-column layout table forced at 80 columns ('examples/s…')."""
    from dialsum.plan import build_plan, print_plan

    config = config_from_dict(
        {"model": {"name_or_path": str(tiny_llama)}, "data": {"train": str(SAMPLE / "train.csv")}}
    )
    out = io.StringIO()
    print_plan(build_plan(config), Console(file=out, width=80))
    headers = "steps/epoch examples/step largest micro-batch (rows/tokens) padding waste GFLOP/real token A100 h H100 h"
    _words_intact(headers + " activations (ckpt) total (ckpt) packed rows packed flat", out.getvalue())


def test_help_of_every_command_reads_at_80_columns():
    """Mutation caught: --set's example 'training.learning_rate=1e-5' in kfold's narrower column ('1e…')."""
    from typer.testing import CliRunner

    from dialsum.cli import app

    runner = CliRunner()
    commands = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    for command in commands:
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
        assert result.exit_code == 0, (command, result.output)
        assert "…" not in result.output, (command, [line for line in result.output.splitlines() if "…" in line])
        assert all(len(line) <= 80 for line in result.output.splitlines()), command


# ---------------------------------------------------------------- console noise


def test_a_bpe_tokenizer_does_not_warn_about_a_clean_up_it_skips():
    """Mutation caught: the real Llama-3 tokenizer keeps clean_up_tokenization_spaces=True, and transformers prints
    'Ignoring clean_up_tokenization_spaces=True for BPE tokenizer' in the middle of inspect's examples."""
    from conftest import SHARED, running_in_ci
    from dialsum.models import load_tokenizer

    folder = SHARED / "models" / "llama-3.2-korean-bllossom-3b"
    if not (folder / "tokenizer_config.json").is_file():
        if running_in_ci():
            pytest.fail(f"{folder} not present")
        pytest.skip(f"{folder} not present")
    config = config_from_dict({"model": {"name_or_path": str(folder)}})
    tokenizer = load_tokenizer(folder, config)
    assert tokenizer.clean_up_tokenization_spaces is False
    text = "#Person1#: 안녕하세요 , 오늘 어때요 ?"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text  # spaces kept, as before


def test_tied_embeddings_missing_from_a_checkpoint_are_not_reported(tiny_llama, caplog):
    """A tied-embedding checkpoint stores embed_tokens once; loading the best checkpoint reports
    lm_head.weight as missing. Mutation caught: TiedWeightsMixin passing the shared keys on to the warning."""
    import logging

    from torch.nn.modules.module import _IncompatibleKeys
    from transformers import AutoModelForCausalLM

    from dialsum.monitor import TiedWeightsMixin, shared_parameter_names

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert "lm_head.weight" in shared_parameter_names(model)

    class Base:
        def _issue_warnings_after_load(self, load_result):
            if load_result.missing_keys:
                logging.getLogger("test").warning(f"missing keys {load_result.missing_keys}")

    class Trainer(TiedWeightsMixin, Base):
        pass

    trainer = Trainer()
    trainer.model = model
    with caplog.at_level(logging.WARNING, logger="test"):
        trainer._issue_warnings_after_load(_IncompatibleKeys(["lm_head.weight"], []))
        assert not caplog.records
        trainer._issue_warnings_after_load(_IncompatibleKeys(["model.norm.weight"], []))  # a real gap still shows
        assert "model.norm.weight" in caplog.text


# ---------------------------------------------------------------- report.md details


def test_summary_rows_say_the_best_checkpoint_and_precision_once():
    """Mutations caught: 'step 100, eval_loss 5.5918 (eval loss there 5.5918)' and 'weights float32 (frozen —)'."""
    from dialsum.rundir import summary_rows

    precision = {"trainable_weights": ["float32"], "frozen_weights": [], "compute": "float32"}
    summary = {"best_step": 100, "best_metric": "eval_loss", "best_metric_value": 5.59181, "best_eval_loss": 5.59181}
    rows = dict(summary_rows({**summary, "precision": {**precision, "optimizer_state": ["float32"]}}))
    assert rows["model/ = best checkpoint"] == "step 100, eval loss 5.5918"
    assert rows["precision"].startswith("weights float32 (all trained), compute float32")
    by_rouge = {**summary, "best_metric": "eval_rouge_sum", "best_metric_value": 41.2}
    assert dict(summary_rows(by_rouge))["model/ = best checkpoint"] == (
        "step 100, eval rouge sum 41.2000 (eval loss there 5.5918)"
    )
    lora = {**precision, "frozen_weights": ["bfloat16"]}
    assert "(frozen bfloat16)" in dict(summary_rows({"precision": lora}))["precision"]


def test_eval_plot_of_two_points_starts_at_zero_and_shows_the_values(tmp_path):
    """Two evaluations 0.09 apart on an axis zoomed to them look like a collapse. Mutation caught: the y axis left
    to matplotlib's autoscale, no values on the points."""
    from dialsum.plots import eval_figure
    from dialsum.rundir import RunData

    run = RunData(
        path=tmp_path, name="run", metrics=[{"step": 50, "eval_loss": 5.6818}, {"step": 100, "eval_loss": 5.5918}]
    )
    fig = eval_figure([run])
    (ax,) = fig.axes
    assert ax.get_ylim()[0] == 0
    assert {text.get_text() for text in ax.texts} == {"5.682", "5.592"}
