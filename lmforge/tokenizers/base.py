"""The tokenizer half of lmforge's protocol: encode, decode, special tokens, chat template."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from lmforge.errors import CheckpointError, ConfigError
from lmforge.paths import read_json


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what generation needs: BOS/EOS/pad ids and a chat template."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_id: int | None = None,
        eos_ids: Sequence[int] = (),
        pad_id: int | None = None,
        add_bos: bool = False,
        chat_template: str | None = None,
    ):
        self.backend = backend
        self.bos_id = bos_id
        self.eos_ids = list(dict.fromkeys(eos_ids))
        self.pad_id = pad_id if pad_id is not None else (self.eos_ids[0] if self.eos_ids else 0)
        self.add_bos = add_bos
        self.chat_template = chat_template
        self._pieces = None  # token piece -> bytes, built on first use

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for. A byte-level token may hold part of a UTF-8 character,
        which decoding the token alone turns into U+FFFD; these are its real bytes, so the
        tokens of a text concatenate to the text's UTF-8."""
        if self._pieces is None:
            self._pieces = _byte_reader(self.backend)
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            return b""
        return self._pieces(piece) or self.decode([token_id], False).encode("utf-8")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; BOS is prepended when the model expects it."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if (
            add_special_tokens
            and self.add_bos
            and self.bos_id is not None
            and ids[:1] != [self.bos_id]
        ):
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """Render a conversation with the model's own Jinja chat template (as transformers does;
        `tools`, OpenAI's function list, for a template that lists them itself)."""
        if not self.chat_template:
            raise ConfigError(
                "this model has no chat template; use plain generation (a prompt, not messages)"
            )
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise ConfigError(
                    f"messages[{i}] must be a dict with 'role' and 'content', got {message!r}"
                )
        template = _compile_template(self.chat_template)
        return template.render(
            messages=messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            bos_token=self._token_text(self.bos_id),
            eos_token=self._token_text(self.eos_ids[0] if self.eos_ids else None),
        )

    def _token_text(self, token_id: int | None) -> str:
        return (self.backend.id_to_token(token_id) or "") if token_id is not None else ""

    # --- saving and loading --------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write `tokenizer.json`, `tokenizer_config.json` and the EOS ids as Hugging Face lays them out."""
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        config = {
            "bos_token": self._token_text(self.bos_id) or None,
            "eos_token": self._token_text(self.eos_ids[0] if self.eos_ids else None) or None,
            "pad_token": self._token_text(self.pad_id) or None,
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
        }
        (directory / "tokenizer_config.json").write_text(
            json.dumps(config, ensure_ascii=False, indent=1)
        )
        generation = {
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_ids,
            "pad_token_id": self.pad_id,
        }
        (directory / "generation_config.json").write_text(json.dumps(generation, indent=1))

    @classmethod
    def from_hf_directory(
        cls, directory: Path, generation_config: dict[str, Any] | None = None
    ) -> Tokenizer:
        """Load `tokenizer.json` (or `vocab.json` + `merges.txt`) with `tokenizer_config.json`."""
        config_path = directory / "tokenizer_config.json"
        config = read_json(config_path) if config_path.exists() else {}
        if not isinstance(config, dict):
            raise CheckpointError(f"{config_path}: expected a JSON object of tokenizer settings")
        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        if (directory / "tokenizer.json").exists():
            backend = _read_tokenizer(directory / "tokenizer.json", tokenizers.Tokenizer.from_file)
        elif vocab.exists() and merges.exists():
            backend = _read_tokenizer(vocab, lambda _: byte_level_bpe(vocab, merges), merges)
        else:
            raise CheckpointError(f"{directory}: no tokenizer.json, nor vocab.json + merges.txt")
        _add_special_tokens_from_config(backend, config)
        template = config.get("chat_template")
        if (directory / "chat_template.jinja").exists():
            try:
                template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CheckpointError(
                    f"{directory / 'chat_template.jinja'}: unreadable ({exc})"
                ) from None
        gen = generation_config or {}

        def token_id(key: str) -> int | None:
            value = config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            return backend.token_to_id(value) if isinstance(value, str) else None

        eos = gen.get("eos_token_id", token_id("eos_token"))
        eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        if not eos_ids and backend.token_to_id("<|endoftext|>") is not None:
            eos_ids = [backend.token_to_id("<|endoftext|>")]
        bos = gen.get("bos_token_id", token_id("bos_token"))
        return cls(
            backend,
            bos_id=bos,
            eos_ids=eos_ids,
            pad_id=gen.get("pad_token_id", token_id("pad_token")),
            add_bos=bool(config.get("add_bos_token", False)),
            chat_template=template if isinstance(template, str) else None,
        )


def _byte_reader(backend: tokenizers.Tokenizer):
    """A function from a token's piece (as the vocabulary spells it) to its bytes, or None
    where the piece is not spelled byte by byte (a word-level vocabulary)."""
    decoder = json.dumps(json.loads(backend.to_str()).get("decoder"))
    if '"ByteLevel"' in decoder:  # GPT-2's alphabet: one printable character per byte
        table = {char: byte for byte, char in enumerate(_byte_alphabet())}
        return lambda piece: (
            bytes(table[c] for c in piece) if all(c in table for c in piece) else None
        )
    if '"ByteFallback"' in decoder or '"Metaspace"' in decoder or "\u2581" in decoder:

        def sentencepiece(piece: str) -> bytes:
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                return bytes([int(piece[3:5], 16)])
            return piece.replace("\u2581", " ").encode("utf-8")

        return sentencepiece
    return lambda piece: None


def _byte_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode: byte b is spelled by character alphabet[b]."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _read_tokenizer(path: Path, read, *others: Path) -> tokenizers.Tokenizer:
    """`read(path)`, with the `tokenizers` library's failures on a damaged file named."""
    try:
        return read(str(path))
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exceptions
        names = " / ".join(str(p) for p in (path, *others))
        raise CheckpointError(
            f"{names}: not a readable tokenizer file ({exc}); is it damaged?"
        ) from None


def byte_level_bpe(vocab_file: Path, merges_file: Path) -> tokenizers.Tokenizer:
    """GPT-2's byte-level BPE from `vocab.json` + `merges.txt` (a.k.a. encoder.json + vocab.bpe)."""
    bpe = models.BPE.from_file(str(vocab_file), str(merges_file))
    # Every token longer than one byte comes from one merge; a merges file with far fewer lines
    # (emptied or cut short) would still load, and silently tokenize differently.
    vocab = models.BPE.read_file(str(vocab_file), str(merges_file))[0]
    merges = sum(
        1
        for line in merges_file.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#version")
    )
    longer = sum(len(token) > 1 for token in vocab)
    if merges + 64 < longer:
        raise CheckpointError(
            f"{merges_file}: {merges} merges for the {longer} multi-byte tokens of {vocab_file.name}; "
            "is it cut short?"
        )
    backend = tokenizers.Tokenizer(bpe)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if backend.token_to_id("<|endoftext|>") is not None:
        backend.add_special_tokens(
            [tokenizers.AddedToken("<|endoftext|>", special=True, normalized=False)]
        )
    return backend


def _add_special_tokens_from_config(backend: tokenizers.Tokenizer, config: dict[str, Any]) -> None:
    decoder = config.get("added_tokens_decoder") or {}
    specials = [
        tokenizers.AddedToken(
            entry["content"], special=True, normalized=entry.get("normalized", False)
        )
        for entry in decoder.values()
        if entry.get("special")
    ]
    if specials:
        backend.add_special_tokens(specials)


_TEMPLATES: dict[str, Any] = {}


def _compile_template(source: str):
    """Compile a chat template once, in a sandbox, with transformers' Jinja settings."""
    if source not in _TEMPLATES:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda value, indent=None: json.dumps(
            value, ensure_ascii=False, indent=indent
        )
        _TEMPLATES[source] = env.from_string(source)
    return _TEMPLATES[source]
