"""Text generation: tokenizers, GPT/LSTM, sampling filters, KV cache, text runs on the engine."""

import math

import pytest
import torch

import genlab
from genlab.data.text import BPETokenizer, CharTokenizer, tokenizer_from_json
from genlab.engine.device import cxx_compiler
from genlab.engine.logs import read_log
from genlab.errors import GenlabError
from genlab.models.autoregressive.generation import (SamplingConfig, apply_repetition_penalty, generate,
                                                     next_token, stream_text, top_k_filter, top_p_filter)
from genlab.models.autoregressive.gpt import GPT, GPTConfig
from genlab.models.autoregressive.lstm import LSTM, LSTMConfig
from tests.conftest import DATA, TINY_VAE, assert_same_tensors, run_cli, stop_at, weights_of

UNICODE = "Crème brûlée, naïve café — 日本語のテキスト, emoji 🎭🗡️, Ελληνικά, кириллица.\n"
# A tiny GPT/LSTM on a tiny corpus: seconds per run.
TINY_TEXT = ["train.test_batches=2", "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "model.dropout=0.1",
             "train.batch_size=4", "train.log_every=5", "train.eval_every=10", "train.eval_batches=2",
             "train.sample_every=1000", "train.ckpt_every=1000", "train.warmup_steps=2", "train.amp=off",
             "train.lr=1e-2"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """20,000 characters of tiny Shakespeare plus a line of non-ASCII text."""
    text = (DATA / "shakespeare" / "input.txt").read_text(encoding="utf-8")[:20_000] + UNICODE
    p = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    p.write_text(text, encoding="utf-8")
    return p


def _gpt(block=8, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=block, n_layer=2, n_head=2, n_embd=16, dropout=0.0, **kw))


# --------------------------------------------------------------------------- tokenizers


def test_tokenizer_round_trips_with_unicode(corpus):
    text = corpus.read_text(encoding="utf-8")
    char = CharTokenizer.train(text)
    sample = text[5_000:6_000] + UNICODE
    assert char.decode(char.encode(sample)) == sample
    assert tokenizer_from_json(char.to_json()).encode(sample) == char.encode(sample)
    with pytest.raises(GenlabError, match="outside this run's .*vocabulary .*'Z'"):
        CharTokenizer.train("abc").encode("abZ")

    bpe = BPETokenizer.train(text[:15_000], vocab_size=300)
    assert bpe.vocab_size == 300
    unseen = "Zebras ünd ⛵ sail — \t tabs,  double  spaces\n\n" + UNICODE  # beyond the training text
    for s in (sample, unseen):
        ids = bpe.encode(s)
        assert bpe.decode(ids) == s
        assert len(ids) < len(s.encode("utf-8"))  # merges shorten the byte sequence
    assert tokenizer_from_json(bpe.to_json()).encode(unseen) == bpe.encode(unseen)


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_causal_mask_future_tokens_never_change_earlier_logits(position):
    m = _gpt(position=position).eval()
    x = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(1))
    base = m(x)
    for j in (3, 7):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % 11
        out = m(y)
        assert torch.allclose(out[:, :j], base[:, :j], atol=1e-6)
        assert not torch.allclose(out[:, j], base[:, j], atol=1e-4)  # the changed position itself does change


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_kv_cache_logits_equal_full_forward(position):
    m = _gpt(block=12, position=position).double().eval()
    x = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(2))
    full = m(x)
    cache = m.init_state(3)
    parts = [m(x[:, :5], cache)] + [m(x[:, t:t + 1], cache) for t in range(5, 9)] + [m(x[:, 9:], cache)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-10)


@pytest.mark.parametrize("position,bias", [("learned", True), ("rope", False), ("rope", True)])
def test_one_token_decode_path_gives_the_plain_forward_bit_for_bit(position, bias):
    """In eval mode a one-token step with the cache takes GPT._decode_one; in training mode
    (dropout 0 here) the same step runs the plain forward. Logits and cache must agree exactly."""
    m = _gpt(block=12, position=position, bias=bias, head_size=6, mlp_hidden=24)  # pruned widths too
    with torch.no_grad():
        for p in m.parameters():  # biases and LayerNorm affines off their 0/1 init
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(3))
    fast, plain = m.init_state(3), m.init_state(3)
    with torch.no_grad():
        m.eval()
        m(x[:, :4], fast)
        got = torch.cat([m(x[:, t:t + 1], fast) for t in range(4, 12)], 1)
        m.train()
        m(x[:, :4], plain)
        want = torch.cat([m(x[:, t:t + 1], plain) for t in range(4, 12)], 1)
    assert got.shape == (3, 8, 11) and torch.equal(got, want)
    assert fast.length == plain.length == 12
    assert all(torch.equal(a, b) for a, b in zip(fast.k + fast.v, plain.k + plain.v))


@pytest.mark.parametrize("kind", ["gpt", "gpt-rope", "lstm"])
def test_cached_generation_equals_uncached_token_for_token(kind):
    if kind.startswith("gpt"):  # block 8: 30 new tokens cross several window jumps
        m = _gpt(block=8, position="rope" if kind == "gpt-rope" else "learned").double()
    else:
        torch.manual_seed(0)
        m = LSTM(LSTMConfig(vocab_size=11, n_embd=8, hidden=16, n_layer=2, dropout=0.0)).double()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    s = SamplingConfig(temperature=1.3, top_k=8, repetition_penalty=1.2)
    a = generate(m, prompt, 30, s, generator=torch.Generator().manual_seed(5), use_cache=True)
    b = generate(m, prompt, 30, s, generator=torch.Generator().manual_seed(5), use_cache=False)
    assert a.shape == (2, 33) and torch.equal(a, b)
    c = generate(m, prompt, 30, s, generator=torch.Generator().manual_seed(6), use_cache=True)
    assert not torch.equal(a, c)  # the generator, not something fixed, decides


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=1.3), SamplingConfig(temperature=0.7),
                                      SamplingConfig(temperature=0)])
def test_chunked_generation_picks_the_step_by_step_tokens(sampling):
    """GPT.decode_chunk (K steps and their in-graph picks per call, what a compiled GPT uses)
    gives the tokens of one step and one next_token pick at a time: the same Gumbel noise in
    the same order, across window jumps (block 8, 30 new tokens). Run eagerly here; the
    compiled chunk is checked against eager generation in the run tests below."""
    m = _gpt(block=8, position="rope").double()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    steps = generate(m, prompt, 30, sampling, generator=torch.Generator().manual_seed(5))
    calls = []
    chunk = m.decode_chunk
    m.decode_chunk = lambda *a: calls.append(len(a[2])) or chunk(*a)
    m.chunk_size = 3
    chunked = generate(m, prompt, 30, sampling, generator=torch.Generator().manual_seed(5))
    assert chunked.shape == (2, 33) and torch.equal(chunked, steps)
    assert len(calls) >= 5 and set(calls) == {3}  # most tokens came from chunks
    for other in (SamplingConfig(repetition_penalty=1.2), SamplingConfig(top_k=5), SamplingConfig(top_p=0.9)):
        calls.clear()  # a penalty needs the context, a filter a graph per value: one step at a time
        generate(m, prompt, 30, other, generator=torch.Generator().manual_seed(5))
        assert calls == []


def test_sampled_tokens_follow_the_filtered_softmax():
    """next_token's Gumbel-max draw: over 40,000 rows of the same logits, each token's share is
    its probability under softmax(logits / T) renormalised over the top k (within 4.5 standard
    errors), and a filtered token is never drawn; a seed repeats the draws."""
    logits = torch.tensor([[0.3, 1.2, -0.4, 0.9, 0.0]]).expand(40_000, 5)
    s = SamplingConfig(temperature=0.7, top_k=3)
    got = next_token(logits, logits[:, :0].long(), s, torch.Generator().manual_seed(2))[:, 0]
    p = torch.zeros(5)
    p[[1, 3, 0]] = (torch.tensor([1.2, 0.9, 0.3]) / 0.7).softmax(0)  # the top 3, renormalised
    share = torch.bincount(got, minlength=5) / len(got)
    assert share[[2, 4]].tolist() == [0.0, 0.0]
    assert torch.all((share - p).abs() <= 4.5 * (p * (1 - p) / len(got)).sqrt() + 1e-9), (share, p)
    assert torch.equal(got, next_token(logits, logits[:, :0].long(), s, torch.Generator().manual_seed(2))[:, 0])


def test_rope_scores_depend_on_relative_position_only():
    from genlab.models.autoregressive.gpt import apply_rope, rope_tables

    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64)

    def score(pq, pk):
        return (apply_rope(q, *rope_tables(torch.tensor([pq]), 8)) * apply_rope(k, *rope_tables(torch.tensor([pk]), 8))).sum()

    assert score(5, 2).item() == pytest.approx(score(13, 10).item(), rel=1e-5)
    assert score(5, 2).item() != pytest.approx(score(5, 3).item(), rel=1e-3)


def test_loss_is_cross_entropy_and_falls_on_a_fixed_batch():
    m = _gpt()
    x = torch.randint(0, 11, (4, 9), generator=torch.Generator().manual_seed(3))
    b = {"x": x[:, :-1], "y": x[:, 1:]}
    first = m.loss(b)["loss"]
    assert first.item() == pytest.approx(math.log(11), rel=0.05)  # small init: near-uniform predictions
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        m.loss(b)["loss"].backward()
        opt.step()
    assert m.loss(b)["loss"].item() < 0.5 * first.item()
    assert m.wte.weight.shape == (11, 16) and not any("lm_head" in k for k in m.state_dict())  # tied head


# --------------------------------------------------------------------------- sampling filters


def test_top_k_top_p_and_repetition_penalty_on_fixed_logits():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    inf = float("-inf")
    k2 = top_k_filter(logits, 2)
    assert torch.isfinite(k2).tolist() == [[False, True, False, True, False]]
    assert torch.equal(top_k_filter(logits, 5), logits)
    # sorted: 0.4, 0.3, 0.15, 0.1, 0.05; p=0.7 is reached by {0.4, 0.3}; p=0.71 needs 0.15 too
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [[False, True, False, True, False]]
    assert torch.isfinite(top_p_filter(logits, 0.71)).tolist() == [[False, True, False, True, True]]
    assert torch.isfinite(top_p_filter(logits, 0.1)).tolist() == [[False, True, False, False, False]]
    assert top_p_filter(logits, 0.7)[0, 0].item() == inf
    raw = torch.tensor([[2.0, -2.0, 1.0]])
    pen = apply_repetition_penalty(raw, torch.tensor([[0, 1, 1]]), 2.0)
    assert pen.tolist() == [[1.0, -4.0, 1.0]]
    # greedy ignores the generator; filtering to one token makes sampling deterministic
    m = _gpt()
    p = torch.tensor([[1, 2]])
    greedy = generate(m, p, 5, SamplingConfig(temperature=0), generator=torch.Generator().manual_seed(0))
    top1 = generate(m, p, 5, SamplingConfig(top_k=1), generator=torch.Generator().manual_seed(9))
    assert torch.equal(greedy, top1)
    with pytest.raises(GenlabError, match="--top-p"):
        generate(m, p, 1, SamplingConfig(top_p=0.0))


def test_stream_text_stop_string_and_seed():
    tok = CharTokenizer(list("abc\n"))
    torch.manual_seed(0)
    m = LSTM(LSTMConfig(vocab_size=4, n_embd=8, hidden=8, n_layer=1, dropout=0.0))
    full = "".join(stream_text(m, tok, "ab", 60, seed=1))
    assert len(full) == 60 and full == "".join(stream_text(m, tok, "ab", 60, seed=1))
    assert full != "".join(stream_text(m, tok, "ab", 60, seed=2))
    stop = full[20:22]
    cut = "".join(stream_text(m, tok, "ab", 60, seed=1, stop=stop))
    assert cut == full[:full.index(stop)]


# --------------------------------------------------------------------------- runs on the engine


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("text") / "gpt"
    res = genlab.train("gpt-shakespeare-cpu", out, overrides=TINY_TEXT + [f"data.path={corpus}", "train.steps=40"])
    assert res.finished
    return res.run_dir


def test_text_run_learns_samples_and_reports(gpt_run):
    losses = [r["loss"] for r in read_log(gpt_run) if r["kind"] == "train"]
    # from uniform guessing over the 87 characters (ln 87 = 4.47 nats) to well below it
    assert len(losses) == 8 and losses[0] > 3.9 and sum(losses[-3:]) / 3 < 0.8 * math.log(87), losses
    rec = [r for r in read_log(gpt_run) if r["kind"] == "train"][-1]
    assert rec["tokens_per_s"] == pytest.approx(rec["steps_per_s"] * 4 * 16)
    assert (gpt_run / "tokenizer.json").is_file() and (gpt_run / "samples" / "final.txt").stat().st_size > 100
    rep = (gpt_run / "report.json").read_text()
    assert '"val_loss"' in rep
    run = genlab.load(gpt_run)
    a = "".join(run.generate("ROMEO:", 40, seed=7, temperature=0.8))
    assert a == "".join(run.generate("ROMEO:", 40, seed=7, temperature=0.8))  # a seed reproduces a sample
    assert a != "".join(run.generate("ROMEO:", 40, seed=8, temperature=0.8))
    with pytest.raises(GenlabError, match="text run"):
        run.sample(4)


@pytest.mark.skipif(cxx_compiler() is None, reason="torch.compile needs a C++ compiler")
def test_compiled_decode_step_generates_the_eager_text(gpt_run):
    run = genlab.load(gpt_run)
    model = run.model.eval()
    prompt = torch.tensor([run.tokenizer.encode("ROMEO:")] * 2)  # two rows; 70 tokens cross window jumps
    cache = model.init_state(2)
    eager_logits = [model(prompt, cache)[:, -1]] + [model(prompt[:, :1], cache)[:, -1] for _ in range(5)]
    s = SamplingConfig(temperature=0.8)
    eager = generate(model, prompt, 70, s, generator=torch.Generator().manual_seed(4))
    run.compile()  # Run.compile -> GPT.compile_decode: the step, a chunk of 8 and the refill, compiled on first use
    assert model._compiled_decode is not None and model._compiled_chunk is not None and model.chunk_size == 8
    model.compile_decode(chunk=3)  # a shorter chunk compiles faster; single steps fill what chunks of 3 leave
    cache = model.init_state(2)
    compiled_logits = [model(prompt, cache)[:, -1]] + [model(prompt[:, :1], cache)[:, -1] for _ in range(5)]
    for a, b in zip(eager_logits, compiled_logits):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)  # float rounding, not more
    calls, refills = [], []
    chunk, refill = model.decode_chunk, model._compiled_refill
    model.decode_chunk = lambda *a: calls.append(1) or chunk(*a)
    model._compiled_refill = lambda *a: refills.append(1) or refill(*a)
    assert torch.equal(generate(model, prompt, 70, s, generator=torch.Generator().manual_seed(4)), eager)
    assert len(calls) >= 10 and len(refills) >= 5  # compiled chunks and window refills made most tokens


def test_evaluate_text_entries(gpt_run):
    from genlab.evaluation.text import evaluate_text

    res = evaluate_text(genlab.load(gpt_run), n=6, seed=0, metrics=None)
    assert list(res) == ["val_loss", "perplexity", "bits_per_char", "bleu", "rouge_l", "distinct_2"]
    v = res["val_loss"]["value"]
    assert 1.0 < v < math.log(70)
    assert res["perplexity"]["value"] == pytest.approx(math.exp(v))
    assert res["bits_per_char"]["value"] == pytest.approx(v / math.log(2))  # char level: one token per char
    for k in ("bleu", "rouge_l", "distinct_2"):
        assert 0.0 <= res[k]["value"] <= 1.0 and res[k]["n"] == 6
    assert res["distinct_2"]["value"] > 0.3
    assert set(res["bleu"]) >= {"value", "extractor", "n", "seed", "seconds"}
    again = evaluate_text(genlab.load(gpt_run), n=6, seed=0, metrics=["val_loss", "bleu"])
    assert again["val_loss"]["value"] == v and again["bleu"]["value"] == res["bleu"]["value"]
    with pytest.raises(GenlabError, match="unknown text metric"):
        evaluate_text(genlab.load(gpt_run), n=6, seed=0, metrics=["fid"])


@pytest.mark.parametrize("preset,extra", [("gpt-shakespeare-cpu", []),
                                          ("lstm-shakespeare", ["data.tokenizer=bpe", "data.vocab_size=300"])])
def test_resumed_text_run_equals_uninterrupted(tmp_path, corpus, preset, extra):
    over = [o for o in TINY_TEXT if not o.startswith(("model.n_head", "model.n_embd"))] + extra
    over += ["model.n_embd=16", "model.hidden=16"] if preset.startswith("lstm") else ["model.n_head=2", "model.n_embd=16"]
    common = dict(overrides=over + [f"data.path={corpus}", "train.steps=16"])
    genlab.train(preset, tmp_path / "full", **common)

    part = genlab.train(preset, tmp_path / "part", callbacks=[stop_at(7)], **common)
    assert not part.finished and part.state.step == 7
    assert genlab.train(resume=tmp_path / "part").state.step == 16
    assert_same_tensors(weights_of(tmp_path / "full"), weights_of(tmp_path / "part"), atol=0)
    if extra:  # BPE: the resumed run reused the saved tokenizer
        assert (tmp_path / "part" / "tokenizer.json").read_text() == (tmp_path / "full" / "tokenizer.json").read_text()


def test_cli_streams_text_and_rejects_bad_input(gpt_run, tmp_path, capsys):
    out = tmp_path / "s.txt"
    r = run_cli("sample", str(gpt_run), "--prompt", "ROMEO:", "--max-tokens", "30", "--seed", "3",
                "--top-k", "10", "--top-p", "0.9", "--temperature", "0.9", "--out", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert text.startswith("ROMEO:") and len(text) == 36 and r.stdout == text + "\n"
    assert "Traceback" not in r.stderr

    from genlab.cli import main

    def error(args, fragment, capsys=capsys):
        assert main(args) != 0
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("genlab: error: ") and fragment in last, last

    error(["sample", str(gpt_run), "--prompt", "Ωmega"], "outside this run's 87-character vocabulary")
    error(["sample", str(gpt_run), "--prompt", "a", "--top-k", "0"], "--top-k must be >= 1")
    error(["train", "gpt-shakespeare-cpu", "--out", str(tmp_path / "x"), "--steps", "1",
           "--set", f"data.path={tmp_path / 'missing.txt'}"], "text corpus")
    error(["train", "gpt-shakespeare-cpu", "--out", str(tmp_path / "y"), "--steps", "1",
           "--set", "data.dataset=mnist"], "set data.dataset=text")
    vae = genlab.train("vae-mnist", tmp_path / "vae", overrides=TINY_VAE + ["train.steps=1"], data_root=str(DATA))
    error(["sample", str(vae.run_dir), "--prompt", "ROMEO:"], "--prompt is for text runs")
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_compiled_training_matches_eager_training(tmp_path, corpus):
    """train.compile=true (torch.compile of the loss, forward and backward) changes the kernels,
    not the arithmetic: the same steps give the same losses and weights within float tolerance."""
    over = TINY_TEXT + [f"data.path={corpus}", "train.steps=6", "train.log_every=1", "model.dropout=0.0"]
    eager = genlab.train("gpt-shakespeare-cpu", tmp_path / "eager", overrides=over)
    comp = genlab.train("gpt-shakespeare-cpu", tmp_path / "comp", overrides=over + ["train.compile=true"])
    assert eager.finished and comp.finished
    losses = [[r["loss"] for r in read_log(run) if r["kind"] == "train"] for run in (tmp_path / "eager", tmp_path / "comp")]
    assert len(losses[0]) == 6 and losses[0][-1] < losses[0][0]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert_same_tensors(weights_of(tmp_path / "comp"), weights_of(tmp_path / "eager"), atol=1e-4)
