"""The CLI, and clear errors for bad models and files."""

import json

import pytest

import lmforge
from lmforge.cli import main
from tests.conftest import save_random_hf_model


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_json(capsys, tiny_gpt2_dir):
    model = tiny_gpt2_dir[0]
    argv = f"generate Hello --model {model} --json --max-new-tokens 5 --top-logprobs 2".split()
    code, out, _ = run(capsys, *argv)
    assert code == 0
    data = json.loads(out)
    completion = data["completions"][0]
    assert len(completion["token_ids"]) == len(completion["logprobs"]) == 5
    assert completion["finish_reason"] == "length" and len(completion["top_logprobs"][0]) == 2
    expected = lmforge.load(tiny_gpt2_dir[0]).generate("Hello", max_new_tokens=5)
    assert completion["token_ids"] == expected.token_ids and completion["text"] == expected.text


def test_generate_text_and_beams(capsys, tiny_gpt2_dir):
    model = tiny_gpt2_dir[0]
    argv = f"generate Hi -m {model} --max-new-tokens 4 --num-beams 2 -n 2".split()
    code, out, _ = run(capsys, *argv)
    assert code == 0 and out.count("--- ") == 2


def test_info_and_models(capsys, tiny_llama_dir):
    code, out, _ = run(capsys, "info", str(tiny_llama_dir[0]), "--json")
    info = json.loads(out)
    assert (
        code == 0
        and info["family"] == "llama"
        and info["layers"] == 2
        and info["heads"] == "4 (kv 2)"
    )
    code, out, _ = run(capsys, "models")
    assert code == 0 and "smollm2-135m-instruct (default)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["generate", "x", "--model", "no-such-model"],
            "unknown model 'no-such-model'; known models: smollm2-135m-instruct",
        ),
        (["generate", "x", "--model", "/no/such/dir"], "does not exist"),
        (["generate", "x", "--temperature", "-1"], "temperature=-1.0 is invalid"),
        (["generate", "x", "--top-k", "-3"], "top_k=-3"),
        (["generate", "x", "--logit-bias", "abc"], "TOKEN_ID=BIAS"),
    ],
)
def test_cli_errors_are_one_clear_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_invalid_utf8_prompt_file(capsys, tmp_path):
    bad = tmp_path / "prompt.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    code, _, err = run(capsys, "generate", "--prompt-file", str(bad))
    assert code == 2 and "invalid UTF-8 at byte 3" in err


def test_truncated_gguf_names_the_file(tmp_path, smollm_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(smollm_path.read_bytes()[:2_000_000])
    with pytest.raises(lmforge.CheckpointError, match="broken.gguf"):
        lmforge.load(broken)


def test_not_gguf_at_all(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"this is not a model")
    with pytest.raises(lmforge.CheckpointError, match="fake.gguf"):
        lmforge.load(fake)


def test_truncated_safetensors_names_the_directory(tmp_path):
    save_random_hf_model(tmp_path, "gpt2")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(lmforge.CheckpointError, match=str(tmp_path)):
        lmforge.load(tmp_path)


def test_unsupported_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(
        lmforge.CheckpointError, match="'bert' is not supported; supported: gpt2, llama"
    ):
        lmforge.load(tmp_path)


def test_directory_without_config(tmp_path):
    with pytest.raises(lmforge.CheckpointError, match="no config.json"):
        lmforge.load(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path):
    save_random_hf_model(tmp_path, "gpt2")
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_embd"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(lmforge.CheckpointError, match="has shape"):
        lmforge.load(tmp_path)


def test_bad_dtype():
    with pytest.raises(lmforge.ConfigError, match="dtype='int3'"):
        lmforge.load("smollm2-135m-instruct", dtype="int3")


def test_generate_quantized_and_speculative_flags(capsys, tiny_llama_dir, smollm_path):
    model = str(tiny_llama_dir[0])
    argv = ["generate", "Hi", "-m", model, "--max-new-tokens", "6", "--ignore-eos", "--json"]
    code, out, _ = run(capsys, *argv, "-q", "int8")
    assert code == 0
    expected = lmforge.load(model, quantize="int8").generate(
        "Hi", max_new_tokens=6, ignore_eos=True
    )
    assert json.loads(out)["completions"][0]["token_ids"] == expected.token_ids
    plain = lmforge.load(model).generate("Hi", max_new_tokens=6, ignore_eos=True).token_ids
    for extra in (["--prompt-lookup", "3"], ["--draft-model", model, "--draft-tokens", "2"]):
        code, out, _ = run(capsys, *argv, *extra)
        assert code == 0 and json.loads(out)["completions"][0]["token_ids"] == plain
    code, out, err = run(capsys, "info", str(smollm_path), "-q", "int4", "--json")
    assert code == 0 and json.loads(out)["quantization (runtime)"] == "int4"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "Hi", "-q", "int3"], "invalid choice: 'int3'"),
        (["generate", "Hi", "--prompt-lookup", "4", "--temperature", "0.8"], "greedy"),
        (
            ["generate", "Hi", "--draft-model", "x", "--top-k", "5"],
            "--draft-model works with greedy",
        ),
        (["generate", "Hi", "--prompt-lookup", "-1"], "prompt_lookup_num_tokens=-1"),
        (["bench", "--runs", "0"], "--runs 0: expected at least 1"),
        (["serve", "--max-batch", "0"], "--max-batch 0: expected at least 1"),
        (["bench", "-m", "no-such-model"], "unknown model 'no-such-model'"),
    ],
)
def test_speed_option_errors(capsys, argv, message):
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    _, err = capsys.readouterr()
    assert code == 2 and message in err


def test_bench_helpers(tiny_llama_dir):
    import sys

    from lmforge.bench import FIRST_TOKEN_MARK, decode_weight_bytes, start_and_peak_rss

    lm = lmforge.load(tiny_llama_dir[0])
    config = lm.model.config
    # Untied: every block weight, norm and the head, but not the embedding table.
    embedding = config.vocab_size * config.d_model * 4
    total = sum(p.numel() * 4 for p in lm.model.parameters())
    assert decode_weight_bytes(lm.model) == total - embedding
    quantised = lmforge.load(tiny_llama_dir[0], quantize="int8")
    assert decode_weight_bytes(quantised.model) < (total - embedding) / 3
    code = (
        f"print({FIRST_TOKEN_MARK!r}, flush=True); x = bytearray(64 * 2**20); "
        "from lmforge.bench import peak_rss_line; print(peak_rss_line())"
    )
    seconds, mib = start_and_peak_rss([sys.executable, "-c", code])
    assert 0 < seconds < 60 and mib >= 64


def test_bench_start_up_timeline(tiny_llama_dir):
    """The start-up child marks each stage; the stages come in order, before the first token."""
    from lmforge.bench import lmforge_start_argv, start_and_peak_rss

    stages: dict[str, float] = {}
    argv = lmforge_start_argv(str(tiny_llama_dir[0]), "auto", 1)
    first, mib = start_and_peak_rss(argv, stages=stages)
    assert list(stages) == ["import torch", "import lmforge", "load the model"]
    assert 0 < stages["import torch"] < stages["import lmforge"] < stages["load the model"] < first
    assert mib > 100  # torch alone is more


def test_generating_imports_only_what_generation_needs(tiny_llama_dir):
    """A process that loads a model and generates never imports what other verbs need (they
    cost start-up time and memory): the server, plotting, templates, constraints, evaluation."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys, lmforge\n"
        f"lmforge.load({str(tiny_llama_dir[0])!r}).generate('The cat', max_new_tokens=3)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = set(json.loads(out.stdout.splitlines()[-1]))
    loaded = modules | {name.split(".")[0] for name in modules}
    heavy = {"fastapi", "uvicorn", "starlette", "matplotlib", "jinja2", "llguidance",
             "transformers", "sacrebleu", "rouge_score", "gguf", "torch._inductor",
             "lmforge.embeddings", "lmforge.evaluation", "lmforge.serve", "lmforge.training"}  # fmt: skip
    assert heavy & loaded == set()
