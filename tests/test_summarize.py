"""Summarisation: ROUGE as rouge-score computes it (stemmed, best of several references), the
shipped chat model summarising through its template (batched as alone), and the eval command."""

from __future__ import annotations

import json

import pytest

import lmforge
from lmforge.cli import main as cli
from lmforge.errors import ConfigError
from lmforge.evaluation.metrics import summary_scores

DOCUMENT = (
    "#Person1#: Did you finish the report for the meeting tomorrow? "
    "#Person2#: Not yet. I still need the sales figures from Mark. "
    "#Person1#: Call him now, the meeting starts at nine."
)


def test_rouge_is_stemmed_and_takes_the_best_reference():
    same = summary_scores(["The cats were running."], ["the cat was running"])
    assert same.rouge1 == pytest.approx(75)  # the, cat(s), run(ning) of four words each
    best = summary_scores(["a red house"], [["a blue car", "a red house"]])
    assert best.rouge1 == best.rouge2 == best.rougeL == best.rougeLsum == pytest.approx(100)
    none = summary_scores(["completely different"], ["nothing shared here"])
    assert none.rouge1 == 0 and none.mean_words == 2 and none.mean_reference_words == 3
    with pytest.raises(ConfigError, match="1 summaries but 2 references"):
        summary_scores(["x"], ["a", "b"])


def test_the_chat_model_summarises_through_its_template_batched_as_alone(smollm):
    alone = smollm.summarize(DOCUMENT, max_new_tokens=24)
    batched = smollm.summarize(
        [DOCUMENT, "The weather was cold all week in Oslo."], max_new_tokens=24
    )
    assert alone.text and "\n" not in alone.text.strip()
    assert batched[0].text == alone.text
    prompt = smollm.tokenizer.decode(smollm.summary_prompt(DOCUMENT), skip_special_tokens=False)
    assert "<|im_start|>user\nSummarize the following text" in prompt


def test_eval_scores_summaries_of_a_jsonl_file(smollm_path, tmp_path, capsys):
    data = tmp_path / "dialogues.jsonl"
    rows = [
        {
            "dialogue": DOCUMENT,
            "summary1": "Person2 needs Mark's sales figures for the report.",
            "summary2": "The report is not finished.",
        }
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    argv = ["eval", "--task", "summarization", "--model", str(smollm_path), "--data", str(data)]
    argv += ["--field", "dialogue", "--reference-field", "summary1,summary2", "--json"]
    assert cli(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 < report["rouge1"] <= 100 and report["summaries"] == 1 and report["stemming"]


def test_an_empty_text_is_named(tiny_gpt2_dir):
    lm = lmforge.load(tiny_gpt2_dir[0])
    with pytest.raises(ConfigError, match=r"texts\[1\] is empty"):
        lm.summarize(["A text.", "  "])
    with pytest.raises(ConfigError, match="empty list"):
        lm.summarize([])
