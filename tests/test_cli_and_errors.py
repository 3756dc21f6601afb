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
