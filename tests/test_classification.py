"""Sequence classification: a head on any lmforge model learns a planted signal (an LSTM from
scratch, LoRA on a small GPT), batched prediction equals one text at a time, the GPT-2 bundle is
transformers' GPT2ForSequenceClassification with our logits, zero-shot scores are sums of token
log-probabilities, and bad data is refused with the row named."""

from __future__ import annotations

import json
import random

import pytest
import torch

import lmforge
from lmforge.cli import main as cli
from lmforge.data.labelled import read_labelled
from lmforge.errors import ConfigError
from lmforge.evaluation.classification import classification_scores, label_logits
from lmforge.evaluation.perplexity import token_nll
from lmforge.models.heads import SequenceClassifier
from lmforge.models.presets import build_model
from lmforge.training import train
from lmforge.training.config import TrainConfig

FILLER = [
    "the",
    "a",
    "film",
    "movie",
    "story",
    "actor",
    "plot",
    "scene",
    "music",
    "camera",
    "light",
    "long",
    "short",
    "old",
    "new",
    "first",
    "last",
    "city",
    "night",
    "day",
    "house",
    "road",
    "water",
    "people",
    "friend",
    "family",
    "time",
    "place",
    "way",
    "hand",
    "eye",
    "voice",
]
GOOD, BAD = ["great", "excellent", "wonderful"], ["awful", "terrible", "boring"]


def planted(count: int, seed: int) -> list[tuple[str, str]]:
    """Texts of filler words with one sentiment word somewhere: the label is its side."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.choice(["neg", "pos"])
        words = rng.choices(FILLER, k=rng.randint(4, 12))
        words.insert(rng.randint(0, len(words)), rng.choice(GOOD if label == "pos" else BAD))
        rows.append((" ".join(words), label))
    return rows


def write_tsv(path, rows, header=("sentence", "label")):
    lines = ["\t".join(header)] + [f"{text}\t{label}" for text, label in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    return write_tsv(root / "train.tsv", planted(600, 1)), write_tsv(
        root / "dev.tsv", planted(200, 2)
    )


def settings(train_file, dev_file, **overrides) -> TrainConfig:
    values = dict(
        task="classification",
        data=str(train_file),
        val_data=str(dev_file),
        batch_size=16,
        steps=150,
        eval_interval=75,
        warmup=10,
        lr=3e-3,
        min_lr=3e-4,
        log_interval=25,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def lstm_run(sentiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("lstm-classifier")
    config = settings(
        *sentiment,
        arch="lstm",
        tokenizer="word",
        n_embd=32,
        hidden_size=48,
        n_layer=1,
        tie_embeddings=False,
    )
    return train(config, out), out


def test_an_lstm_from_scratch_learns_the_planted_signal(lstm_run, sentiment):
    result, out = lstm_run
    assert result.evaluations[-1]["val_accuracy"] >= 0.95, result.evaluations
    report = json.loads((out / "classification.json").read_text())
    assert report["labels"] == ["neg", "pos"] and report["accuracy"] >= 0.95
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_loss", "val_accuracy", "val_macro_f1"} <= set(header)
    lm = lmforge.load(out)
    assert lm.classifier
    result = lm.classify("the film was wonderful and the music long")
    assert result.label == "pos" and result.score > 0.5
    assert set(result.scores) == {"neg", "pos"}
    assert abs(sum(result.scores.values()) - 1) < 1e-5
    with pytest.raises(ConfigError, match="does not generate"):
        lm.generate("the film")


@pytest.fixture(scope="module")
def gpt_run(sentiment, tiny_gpt2_dir, tmp_path_factory):
    directory, _ = tiny_gpt2_dir
    out = tmp_path_factory.mktemp("gpt-classifier")
    config = settings(
        *sentiment,
        init_from=str(directory),
        tokenizer=str(directory),
        lora_rank=8,
        lora_alpha=16.0,
        lr=1e-2,
        min_lr=1e-3,
        steps=300,
        eval_interval=150,
    )
    return train(config, out), out


def test_a_lora_head_on_a_small_gpt_learns_and_loads_in_transformers(gpt_run, sentiment):
    import transformers

    result, out = gpt_run
    assert result.evaluations[-1]["val_accuracy"] >= 0.95, result.evaluations
    lm = lmforge.load(out)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPT2ForSequenceClassification"
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    texts = [t for t, _ in planted(6, 3)]
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = hf(**encoded).logits
    ours = label_logits(lm.model, [lm.tokenizer.encode(t) for t in texts], lm.tokenizer.pad_id)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["lstm", "gru", "transformer", "gpt"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_batched_prediction_equals_one_text_at_a_time(arch, pooling):
    torch.manual_seed(0)
    trunk = build_model(arch, 50, 32, n_layer=2, n_embd=32, n_head=4, hidden_size=32, dropout=0.0)
    model = SequenceClassifier(trunk, ["a", "b", "c"], pooling).eval()
    rows = [torch.randint(1, 50, (n,)).tolist() for n in (3, 9, 1, 14, 6)]
    batched = label_logits(model, rows, pad_id=0, batch_size=5)
    alone = torch.cat([label_logits(model, [row], pad_id=0) for row in rows])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_zero_shot_scores_are_sums_of_token_log_probabilities(tiny_gpt2_dir):
    from lmforge.evaluation.classification import zero_shot_prompt

    lm = lmforge.load(tiny_gpt2_dir[0])
    labels, text = ["negative", "positive"], "the music was great"
    examples = [("a boring film", "negative")]
    result = lm.classify(text, labels=labels, examples=examples)
    prompt = zero_shot_prompt(lm.tokenizer, text, labels, examples)
    sums = []
    for label in labels:
        word = lm.tokenizer.encode(" " + label, add_special_tokens=False)
        nll = token_nll(lm.model, prompt + word)  # what `lmforge eval` sums over a text
        sums.append(-float(nll[-len(word) :].sum()))
    expected = torch.tensor(sums).softmax(0)
    assert result.label == labels[int(expected.argmax())]
    assert result.scores["positive"] == pytest.approx(float(expected[1]), abs=1e-5)
    batched = lm.classify([text, "an awful plot"], labels=labels, examples=examples)
    assert batched[0].scores == pytest.approx(result.scores, abs=1e-5)


def test_zero_shot_through_the_chat_template(smollm):
    """An instruct model is asked through its template, and the label is the assistant's reply
    (no leading space); scores are still sums of the reply tokens' log-probabilities."""
    from lmforge.evaluation.classification import zero_shot_prompt

    labels, text = ["negative", "positive"], "Dull, boring and far too long."
    prompt = zero_shot_prompt(smollm.tokenizer, text, labels)
    rendered = smollm.tokenizer.decode(prompt, skip_special_tokens=False)
    assert rendered.endswith(f"Text: {text}<|im_end|>\n<|im_start|>assistant\n")
    sums = []
    for label in labels:
        word = smollm.tokenizer.encode(label, add_special_tokens=False)
        sums.append(-float(token_nll(smollm.model, prompt + word)[-len(word) :].sum()))
    result = smollm.classify(text, labels=labels)
    assert result.scores["negative"] == pytest.approx(
        float(torch.tensor(sums).softmax(0)[0]), abs=1e-5
    )


def test_the_cli_trains_evaluates_and_predicts(sentiment, lstm_run, tmp_path, capsys):
    _, out = lstm_run
    assert (
        cli(["classify", "eval", "--model", str(out), "--data", str(sentiment[1]), "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] >= 0.95 and len(report["confusion"]) == 2
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"text": "an awful boring plot"}) + "\n")
    assert cli(["classify", "predict", "--model", str(out), "--data", str(texts)]) == 0
    label, probability = capsys.readouterr().out.split()
    assert label == "neg" and float(probability) > 0.5
    run = tmp_path / "cli-run"
    argv = ["classify", "train", "--data", str(sentiment[0]), "--out", str(run), "--steps", "4"]
    assert cli(argv + ["--labels", "neg,pos", "--eval-interval", "4", "--n-embd", "16"]) == 0
    assert json.loads((run / "config.json").read_text())["lmforge_config"]["labels"] == [
        "neg",
        "pos",
    ]


def test_a_resumed_classifier_run_gives_the_same_loss_trace(sentiment, tmp_path):
    config = settings(
        *sentiment,
        arch="gru",
        tokenizer="word",
        n_embd=16,
        hidden_size=16,
        steps=12,
        eval_interval=6,
    )
    whole = train(config, tmp_path / "whole")
    train(TrainConfig(**{**config.to_dict(), "steps": 6}), tmp_path / "part")
    resumed = train(config, tmp_path / "part", resume=True)
    assert resumed.train_losses == pytest.approx(whole.train_losses, abs=1e-6)


def test_scores_count_like_scikit_learn():
    scores = classification_scores([0, 1, 1, 2, 0], [0, 1, 2, 2, 1], ["a", "b", "c"])
    assert scores.accuracy == pytest.approx(3 / 5)
    assert scores.confusion == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    # F1: a 2*1/(2+1), b 2*1/(2+2), c 2*1/(1+2)
    assert scores.macro_f1 == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)


def test_bad_labelled_data_is_refused_with_the_row(tmp_path, sentiment):
    bad = tmp_path / "bad.tsv"
    write_tsv(bad, [("fine", "pos"), ("meh", "maybe")])
    with pytest.raises(ConfigError, match=r"row 3: label 'maybe' is not one of"):
        read_labelled(bad, labels=["neg", "pos"])
    write_tsv(bad, [("fine", "pos"), ("", "neg")])
    with pytest.raises(ConfigError, match="row 3: the 'sentence' text is empty"):
        read_labelled(bad)
    write_tsv(bad, [("fine", "pos")], header=("sentence", "stars"))
    with pytest.raises(ConfigError, match="no column 'label'"):
        read_labelled(bad, text_column="sentence")
    write_tsv(bad, [("fine", "pos"), ("good", "pos")])
    with pytest.raises(ConfigError, match="a classifier needs two classes"):
        train(settings(bad, sentiment[1], arch="lstm", tokenizer="word"), tmp_path / "one")
    numbered = tmp_path / "numbered.tsv"
    write_tsv(numbered, [("fine", "1"), ("bad", "0")])
    assert read_labelled(numbered, labels=["neg", "pos"]).labels == [1, 0]


def test_a_llama_classifier_bundle_is_transformers_llama_for_sequence_classification(
    tiny_llama_dir, tmp_path
):
    import transformers

    from lmforge.checkpoints.bundle import save_bundle

    lm = lmforge.load(tiny_llama_dir[0])
    torch.manual_seed(0)
    classifier = SequenceClassifier(lm.model, ["a", "b", "c"]).eval()
    save_bundle(classifier, lm.tokenizer, tmp_path / "bundle")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "bundle")
    assert type(hf).__name__ == "LlamaForSequenceClassification"
    rows = [lm.tokenizer.encode(t) for t in ("one two three", "a longer text of several words")]
    ours = label_logits(classifier, rows, lm.tokenizer.pad_id)
    with torch.no_grad():
        theirs = torch.cat([hf.eval()(torch.tensor([row])).logits for row in rows])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    again = lmforge.load(tmp_path / "bundle")
    assert again.classifier and again.model.labels == ["a", "b", "c"]
    torch.testing.assert_close(label_logits(again.model, rows, 0), ours, atol=1e-6, rtol=1e-6)


def test_balanced_class_weights_are_inverse_to_class_counts(tmp_path):
    from lmforge.training import ClassificationTrainer

    data = write_tsv(
        tmp_path / "skewed.tsv", [("good film", "pos")] * 6 + [("bad film", "neg")] * 2
    )
    config = TrainConfig(
        task="classification",
        data=str(data),
        val_fraction=0.0,
        arch="gru",
        tokenizer="word",
        n_embd=8,
        steps=2,
        eval_interval=2,
        class_weights="balanced",
    )  # n / (classes * count): neg 8 / (2 * 2), pos 8 / (2 * 6)
    trainer = ClassificationTrainer(config, tmp_path / "run")
    assert trainer.class_weights.tolist() == pytest.approx([2.0, 8 / 12])
    assert trainer.run().step == 2
