"""Run a GGUF file in llama.cpp (llama-cpp-python, in its own environment) for the export tests.

    python llamacpp_probe.py MODEL.gguf REQUEST.json OUT_DIR

REQUEST: {"ids": [...], "greedy": N, "texts": [...]}. Writes OUT_DIR/logits.npy (the logits at
every position of `ids`, float32) and OUT_DIR/result.json: {"greedy": the N tokens greedy
decoding adds after `ids`, "tokens": each text's token ids (no BOS, no special parsing)}.
The KV cache is kept in float32, so F32 weights give float32 logits throughout.
"""

import json
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama

GGML_TYPE_F32 = 0


def main() -> None:
    model, request, out = sys.argv[1], json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3])
    ids = request["ids"]
    llm = Llama(
        model_path=model,
        n_ctx=len(ids) + request["greedy"] + 8,
        n_threads=2,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        verbose=False,
    )
    llm.eval(ids)
    np.save(out / "logits.npy", np.asarray(llm.scores[: len(ids)], dtype=np.float32))
    greedy = []
    for _ in range(request["greedy"]):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(token)
        llm.eval([token])
    tokens = [llm.tokenize(t.encode(), add_bos=False, special=False) for t in request["texts"]]
    (out / "result.json").write_text(json.dumps({"greedy": greedy, "tokens": tokens}))


if __name__ == "__main__":
    main()
