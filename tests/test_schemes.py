"""Scoring schemes: each reproduces an independent computation of its competition's recipe on the real dev set."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SAMPLE, shared_file
from dialsum.config import config_from_dict
from dialsum.data import load_dialogues, write_predictions
from dialsum.errors import ConfigError, DialsumError
from dialsum.generate import lead_baseline
from dialsum.metrics import score_with_rows
from dialsum.schemes import scheme_tokens, score_scheme


@pytest.fixture(scope="module")
def mecab():
    module = pytest.importorskip("mecab", reason="python-mecab-ko is not installed: schemes dialogsum/dcs need Mecab")
    return module.MeCab()


@pytest.fixture(scope="module")
def rouge101():
    return pytest.importorskip("rouge", reason="the reference package rouge==1.0.1 is not installed ('dialsum[dev]')")


@pytest.fixture(scope="module")
def ko_dev():
    return load_dialogues(shared_file("data/dialogsum-ko/dev.csv"))


def _prediction_sets(dialogues):
    """The lead baseline, and each row's neighbour's reference: several '.'-separated sentences on both sides,
    so the summary-level ROUGE-L (union LCS over sentence pairs) and its tie-breaks have work to do."""
    lead = [lead_baseline(d) for d in dialogues]
    neighbour = [dialogues[(i + 1) % len(dialogues)].references[0] for i in range(len(dialogues))]
    return {"lead": lead, "neighbour": neighbour}


def test_dialogsum_scheme_matches_rouge_101_on_real_dev(ko_dev, mecab, rouge101):
    # Reference: the organizers' own package on Mecab morphemes joined by spaces, F values averaged.
    refs = [d.references for d in ko_dev]
    joined = {}

    def morphs(text):
        if text not in joined:
            joined[text] = " ".join(mecab.morphs(text))
        return joined[text]

    for name, predictions in _prediction_sets(ko_dev).items():
        expected = rouge101.Rouge().get_scores([morphs(p) for p in predictions], [morphs(r[0]) for r in refs], avg=True)
        result, rows = score_scheme(predictions, refs, "dialogsum")
        for ours, theirs in (("rouge1", "rouge-1"), ("rouge2", "rouge-2"), ("rougeL", "rouge-l")):
            assert result[ours] == pytest.approx(100 * expected[theirs]["f"], abs=0.01), (name, ours)
        assert result["rouge_sum"] == pytest.approx(100 * sum(v["f"] for v in expected.values()), abs=0.01)
        assert result["scheme"] == "dialogsum" and result["headline"] == "final_score"
        assert result["final_score"] == pytest.approx(result["rouge_sum"] / 3)  # the leaderboard ranks by the mean
        assert result["analyzer"].startswith("Mecab morphemes (python-mecab-ko ")
        assert len(rows) == len(ko_dev)


def test_dialogsum_scheme_means_over_three_references(mecab, rouge101):
    # DialogSum's hidden test set has three references per dialogue: the mean over them, then over rows.
    dialogues = load_dialogues(shared_file("data/dialogsum-en/test.csv"))[:150]
    predictions = [lead_baseline(d) for d in dialogues]
    pairs = [
        (" ".join(mecab.morphs(p)), " ".join(mecab.morphs(r)))
        for p, d in zip(predictions, dialogues)
        for r in d.references
    ]
    assert len(pairs) == 3 * len(dialogues)
    expected = rouge101.Rouge().get_scores([h for h, _ in pairs], [r for _, r in pairs], avg=True)
    result, _ = score_scheme(predictions, [d.references for d in dialogues], "dialogsum")
    assert result["rouge_sum"] == pytest.approx(100 * sum(v["f"] for v in expected.values()), abs=0.01)
    assert result["rougeL"] == pytest.approx(100 * expected["rouge-l"]["f"], abs=0.01)


def test_dcs_rouge1_matches_clipped_rouge_on_real_dev(ko_dev, mecab, rouge101):
    # Independent: own cleaning, rouge 1.0.1 with exclusive=False (list intersection = clipped counts),
    # mean of per-row F. The dev set has Latin names ("Mr. Smith") and '#Person1#' tags that the cleaning changes.
    def clean(text):
        return " ".join(mecab.morphs(re.sub(r"[^A-Za-z0-9가-힣]", " ", text.lower())))

    refs = [d.references for d in ko_dev]
    for name, predictions in _prediction_sets(ko_dev).items():
        expected = rouge101.Rouge(metrics=["rouge-1"], exclusive=False).get_scores(
            [clean(p) for p in predictions], [clean(r[0]) for r in refs], avg=True
        )
        result, _ = score_scheme(
            predictions, refs, "dcs", bertscore_model=str(ROOT / "no-such-model"), bertscore_layers=9
        )
        assert result["rouge1"] == pytest.approx(100 * expected["rouge-1"]["f"], abs=0.01), name
        assert result["scheme"] == "dcs" and "[^A-Za-z0-9가-힣]" in result["analyzer"]


def test_kiwi_scheme_is_the_unchanged_default(ko_dev):
    predictions = [lead_baseline(d) for d in ko_dev[:60]]
    refs = [d.references for d in ko_dev[:60]]
    result, rows = score_scheme(predictions, refs)
    before, before_rows = score_with_rows(predictions, refs)
    assert {k: result[k] for k in before} == before
    assert [{k: v for k, v in r.items() if k != "degenerate"} for r in rows] == before_rows  # schemes adds the flag
    assert result["scheme"] == "kiwi" and result["analyzer"].startswith("Kiwi morpheme forms (kiwipiepy ")
    assert config_from_dict({"model": {"name_or_path": "x"}}).evaluation.scheme == "kiwi"


def test_dialogsum_arithmetic_counts_sets_and_scores_empty_hypotheses_zero(mecab):
    # rouge 1.0.1 counts n-grams as sets: a repeated word matches once, whatever the reference holds.
    result, rows = score_scheme(["사과 사과 사과", "", "..."], [["사과 사과 배"], ["사과"], ["사과"]], "dialogsum")
    assert rows[0]["rouge1"] == pytest.approx(100 * 2 * (1 * 0.5) / (1 + 0.5 + 1e-8))  # sets {사과} vs {사과, 배}
    assert rows[1]["rouge1"] == rows[2]["rouge1"] == 0.0  # rouge 1.0.1 raises here; we score 0 and count it
    assert result["empty_predictions"] == 1 and result["n"] == 3


def test_scheme_tokens_are_what_each_scheme_counts(mecab):
    text = "Mr. Smith가 #Person1#에게 말했다."
    assert scheme_tokens([text], "dcs")[0] == tuple(mecab.morphs("mr  smith가  person1 에게 말했다 "))
    assert scheme_tokens([text], "dialogsum")[0] == tuple(mecab.morphs(text))
    assert "." in scheme_tokens([text], "kiwi")[0]
    with pytest.raises(DialsumError, match="unknown scoring scheme 'rouge'"):
        scheme_tokens([text], "rouge")


def test_tokenizer_applies_to_kiwi_scheme_only():
    with pytest.raises(ConfigError, match="evaluation.tokenizer=mecab applies to evaluation.scheme=kiwi only"):
        config_from_dict({"model": {"name_or_path": "x"}, "evaluation": {"scheme": "dcs", "tokenizer": "mecab"}})
    with pytest.raises(DialsumError, match="applies to scheme 'kiwi' only"):
        score_scheme(["a"], [["a"]], "dialogsum", tokenizer="whitespace")


def test_dcs_offline_prints_rouge1_and_names_what_it_could_not_load(tmp_path, mecab):
    refs = load_dialogues(SAMPLE / "dcs_sample.jsonl")
    write_predictions(tmp_path / "pred.csv", [d.id for d in refs], [lead_baseline(d) for d in refs])
    write_predictions(tmp_path / "refs.csv", [d.id for d in refs], [d.references[0] for d in refs])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dialsum.cli",
            "evaluate",
            "--predictions",
            tmp_path / "pred.csv",
            "--references",
            tmp_path / "refs.csv",
            "--scheme",
            "dcs",
            "--bertscore-model",
            "bert-base-multilingual-cased",
            "--json",
            tmp_path / "s.json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "240"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    scores = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: ")]
    if scores["bertscore"] is None:  # the usual case offline: mBERT is not in the HF cache
        assert any("BERTScore: not computed: could not load 'bert-base-multilingual-cased'" in n for n in notes)
    assert any(n.startswith("note: BLEURT-20: not computed") for n in notes)
    assert scores["bleurt"] is None and scores["final_score"] is None  # never a silent zero, never a partial mean
    assert 0 < scores["rouge1"] < 100 and "ROUGE-1 F1" in result.stdout
    assert "scheme" in result.stdout and "dcs — Korean_DCS" in result.stdout and "Mecab morphemes" in result.stdout


# ---------------------------------------------------------------- BERTScore plumbing with a tiny local BERT


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer random BERT with a character WordPiece vocabulary, built here (no hub)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    pytest.importorskip("bert_score", reason="bert-score is not installed (pip install 'dialsum[dcs]')")
    text = "".join(d.references[0] for d in load_dialogues(SAMPLE / "dcs_sample.jsonl"))
    chars = sorted({c for c in text if not c.isspace()})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=256,
    )
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
        )
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path


@pytest.mark.slow
def test_dcs_bertscore_uses_the_first_reference_with_a_local_model(tiny_bert, mecab):
    first, second = "영희는 주말에 등산을 간다고 했다.", "민수는 김치찌개를 좋아한다."
    predictions = [first, second, "등산"]
    refs = [[first, second], [first, second], [first]]
    result, rows = score_scheme(predictions, refs, "dcs", bertscore_model=str(tiny_bert), bertscore_layers=2)
    assert rows[0]["bertscore"] == pytest.approx(100.0, abs=1e-3)  # identical to the first reference
    assert rows[1]["bertscore"] < 99.0  # identical to the second reference only: not what DCS scores against
    assert 0 < rows[2]["bertscore"] < 99.0
    assert result["bertscore"] == pytest.approx(sum(r["bertscore"] for r in rows) / 3)
    assert result["final_score"] is None and result["bleurt"] is None  # BLEURT-20 still missing: no headline
    assert not any(n.startswith("BERTScore") for n in result["notes"])
    with pytest.raises(DialsumError, match="set evaluation.bertscore_layers"):
        score_scheme(predictions, refs, "dcs", bertscore_model=str(tiny_bert))


def test_schemes_without_mecab_say_so_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "mecab", None)  # `import mecab` now raises ImportError
    for scheme in ("dialogsum", "dcs"):
        with pytest.raises(DialsumError, match=rf"scheme '{scheme}' needs Mecab \(python-mecab-ko"):
            score_scheme(["사과"], [["사과"]], scheme)
    assert score_scheme(["사과"], [["사과"]], "kiwi")[0]["rouge1"] == 100.0  # the default needs no Mecab


def test_screen_ranks_and_names_the_scheme_when_the_headline_is_missing(mecab):
    # dcs offline: no headline (BLEURT-20 missing); ranking must not compare None with None, and say the scheme.
    from dialsum.run import screen

    config = config_from_dict(
        {
            "model": {"name_or_path": "lead"},
            "evaluation": {"scheme": "dcs", "bertscore_model": str(ROOT / "no-such-model"), "bertscore_layers": 9},
        }
    )
    results = screen(["lead", "lead"], SAMPLE / "dcs_sample.jsonl", config=config)
    assert [r["scheme"] for r in results] == ["dcs", "dcs"] and results[0]["final_score"] is None
    assert results[0]["rouge1"] > 0 and "Mecab" in results[0]["analyzer"]


def test_dialogsum_headline_is_the_leaderboards_mean_on_a_hand_computed_example(mecab):
    """'apple banana cherry' against 'apple banana date': unigram sets share 2 of 3 (F 2/3), bigram sets 1 of 2
    (F 1/2), the LCS is 2 of 3 words (F 2/3). The leaderboard's final score is their mean x 100 = 61.11, not the
    sum 183.33. Mutation caught: the headline back on rouge_sum."""
    result, rows = score_scheme(["apple banana cherry"], [["apple banana date"]], "dialogsum")
    f = lambda overlap, n: 2 * (overlap / n) ** 2 / (2 * overlap / n + 1e-8)  # noqa: E731 (P = R = overlap/n)
    expected = [100 * f(2, 3), 100 * f(1, 2), 100 * f(2, 3)]
    assert [result[k] for k in ("rouge1", "rouge2", "rougeL")] == pytest.approx(expected, abs=1e-9)
    assert result["headline"] == "final_score" and result[result["headline"]] == pytest.approx(61.1111, abs=1e-3)
    assert result["rouge_sum"] == pytest.approx(183.3333, abs=1e-3)
    assert "leaderboard" in result["headline_label"] and rows[0]["final_score"] == pytest.approx(61.1111, abs=1e-3)


def test_published_final_scores_reproduce_with_the_mean_not_the_sum():
    """A published team's F1s 0.5825 / 0.3932 / 0.5027 and its reported final 49.28: the scheme's arithmetic
    (final = mean of the three x 100) gives it; the sum (147.84) would not."""
    from dialsum.schemes import get_scheme

    dialogsum = get_scheme("dialogsum")
    result = {"rouge1": 58.25, "rouge2": 39.32, "rougeL": 50.27}
    final = sum(result[k] for k in dialogsum.metrics) / len(dialogsum.metrics)
    assert round(final, 2) == 49.28 and dialogsum.headline == "final_score"


def test_dcs_keeps_the_first_1000_words_of_each_text_as_the_official_scorer(mecab):
    """A 1,000-word prediction that starts with the reference: the official NIKL scorer cuts both texts to their
    first 1,000 whitespace-separated words. Mutation caught: no word limit (the tail of a 1,500-word prediction
    dilutes its precision)."""
    reference = "철수는 영희에게 내일 도서관에서 만나자고 제안한다."
    filler = " ".join(["그리고"] * 1500)
    cut_inside, _ = score_scheme([reference + " " + filler], [[reference]], "dcs")
    alone, _ = score_scheme(
        [reference + " " + " ".join(["그리고"] * (1000 - len(reference.split())))], [[reference]], "dcs"
    )
    assert cut_inside["rouge1"] == pytest.approx(alone["rouge1"], abs=1e-9)  # words past 1,000 never count
    assert cut_inside["word_limit"] == 1000
    beyond, _ = score_scheme([filler + " " + reference], [[reference]], "dcs")
    assert beyond["rouge1"] == 0.0  # the reference's words come after the limit: nothing matches


@pytest.mark.parametrize("scheme", ["kiwi", "dialogsum", "dcs"])
def test_every_scheme_reports_the_interval_and_halves_of_what_ranks(scheme, mecab, ko_dev):
    dialogues = ko_dev[:120]
    predictions = [lead_baseline(d) for d in dialogues]
    result, rows = score_scheme(
        predictions, [d.references for d in dialogues], scheme, topics=[d.topic for d in dialogues]
    )
    key = "rouge1" if scheme == "dcs" else "final_score"  # dcs offline: no headline, ROUGE-1 ranks
    assert result["interval"]["key"] == key and result["halves"]["key"] == key
    assert result["interval"]["low"] < result[key] < result["interval"]["high"]
    assert result["halves"]["n_public"] + result["halves"]["n_private"] == 120
    mean_of_halves = (
        result["halves"]["public"] * result["halves"]["n_public"]
        + result["halves"]["private"] * result["halves"]["n_private"]
    ) / 120
    assert mean_of_halves == pytest.approx(result[key])
