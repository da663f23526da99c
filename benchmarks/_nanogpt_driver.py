"""Scores a trained nanoGPT checkpoint for benchmarks/gpt_shakespeare.py --compare-nanogpt, with
nanoGPT's own model code: run with a copy of the user's nanoGPT checkout as the working directory.

    python _nanogpt_driver.py OUT_DIR WINDOWS.json RESULT.json

WINDOWS.json: {"windows": [text of block_size + 1 characters, ...], "prompt": "\\n", "new_tokens": 500};
the benchmark scores the windows once (new_tokens 0: no generation), then measures generation in
rounds (no windows), each a fresh process.
Writes RESULT.json: the mean next-token cross-entropy over the windows (nats/token; None without), the
batch-1 generation rate of `model.generate` as nanoGPT's sample.py calls it (temperature 0.8,
top_k 200; best of 3; None when new_tokens is 0), and the parameter count. The checkpoint is read
with weights_only=True.
"""

import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())
from model import GPT, GPTConfig  # noqa: E402  (nanoGPT's model.py, from the working directory)


def main() -> None:
    out_dir, windows_path, result_path = sys.argv[1:4]
    ck = torch.load(os.path.join(out_dir, "ckpt.pt"), map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**ck["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ck["model"].items()})
    model.eval()
    spec = json.load(open(windows_path))
    text = open(os.path.join("data", "shakespeare_char", "input.txt")).read()
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}  # prepare.py's vocabulary
    ids = torch.tensor([[stoi[c] for c in w] for w in spec["windows"]])  # (n, T + 1)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), 64):
            chunk = ids[i:i + 64]
            x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
            logits, _ = model(x, y)  # targets given: logits at every position
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
            total += float(loss)
            count += y.numel()
        prompt = torch.tensor([[stoi[c] for c in spec["prompt"]]])
        n, rates = spec["new_tokens"], []
        for r in range(3 if n else 0):
            torch.manual_seed(1337 + r)
            t0 = time.perf_counter()
            model.generate(prompt, n, temperature=0.8, top_k=200)
            rates.append(n / (time.perf_counter() - t0))
    params = sum(p.numel() for p in model.parameters())
    wpe = model.transformer.wpe.weight.numel()
    json.dump({"val_loss": total / count if count else None, "val_tokens": count,
               "gen_tokens_per_s": max(rates, default=None), "params": params,
               "params_without_positions": params - wpe, "iter_num": ck["iter_num"],
               "own_val_estimate": float(ck["best_val_loss"])}, open(result_path, "w"))


if __name__ == "__main__":
    main()
