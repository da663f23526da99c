"""WaveNet: causality and receptive field, cached = uncached generation, mu-law and linear
targets and the masked loss, bits, training on a fixed batch, conditioning, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.audio import linear_decode, linear_encode, mu_law_encode
from genlab.config import build_config
from genlab.errors import ConfigError
from genlab.models.autoregressive import wavenet as wn
from genlab.models.autoregressive.wavenet import WaveNet, WaveNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")

T = 64


def tiny(**kw) -> WaveNet:
    torch.manual_seed(0)
    base = {"residual_channels": 8, "skip_channels": 16, "layers": 3, "stacks": 2, "audio_length": T}
    cfg = WaveNetConfig(**{**base, **kw})
    cfg.validate()
    return WaveNet(cfg)


def waves(B: int = 2, seed: int = 1) -> torch.Tensor:
    """(B, 1, T) in [-1, 1]: a sine per clip plus noise, spread over many mu-law classes."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T).float()
    x = 0.6 * torch.sin(2 * math.pi * t / 11 + torch.rand(B, 1, 1, generator=g) * 6)
    return (x + 0.1 * torch.randn(B, 1, T, generator=g)).clamp(-1, 1)


def flip(v: torch.Tensor) -> torch.Tensor:
    """A value in another mu-law class (far across zero)."""
    return torch.where(v < 0, torch.full_like(v, 0.9), torch.full_like(v, -0.9))


def test_causal_and_receptive_field():
    m = tiny()
    with torch.no_grad():  # at the default init the farthest sample moves the output by ~1e-7
        for layer in m.layers:
            layer.conv.weight.mul_(4)
    x = waves()
    lg = m.logits(x)  # (B, T, Q)
    t = 40
    after = x.clone()
    after[:, :, t:] = torch.rand(2, 1, T - t) * 2 - 1  # x_t onwards: logits up to t must not move
    assert torch.equal(m.logits(after)[:, :t + 1], lg[:, :t + 1])
    prev = x.clone()
    prev[:, :, t - 1] = flip(prev[:, :, t - 1])  # x_{t-1} is the newest sample x_t's prediction reads
    assert not torch.allclose(m.logits(prev)[:, t], lg[:, t])
    # measured receptive field: change each past sample s < t alone (one batch row each)
    # (the last row unchanged, the reference; 1e-6: float rounding, far below the ~1e-4 effects)
    xs = x[:1].repeat(t + 1, 1, 1)  # (t + 1, 1, T)
    xs[torch.arange(t), 0, torch.arange(t)] = flip(xs[torch.arange(t), 0, torch.arange(t)])
    out = m.logits(xs)[:, t]  # (t + 1, Q)
    moved = (out[:-1] - out[-1:]).abs().amax(1) > 1e-6  # (t,)
    earliest = int(torch.nonzero(moved)[0])
    assert m.receptive_field == 2 * (1 + 2 + 4) + 1 == t - earliest
    assert moved[earliest:].all()


@pytest.mark.parametrize("encoding", ["mulaw", "linear"])
@pytest.mark.parametrize("conditional", [False, True])
def test_cached_generation_equals_uncached(conditional, encoding, monkeypatch):
    m = tiny(conditional=conditional, num_classes=3 if conditional else None, encoding=encoding)
    with torch.no_grad():  # sharper distributions, so a wrong logit shows up as a different sample
        m.head2.weight.mul_(8)
    labels = torch.tensor([2, 0]) if conditional else None
    seen: dict[str, list[torch.Tensor]] = {"cached": [], "uncached": []}
    real = wn.draw_classes
    key = ["cached"]

    def spy(logits, u, temperature):
        seen[key[0]].append(logits.clone())
        return real(logits, u, temperature)

    monkeypatch.setattr(wn, "draw_classes", spy)
    m.train()
    a = m.sample(2, generator=torch.Generator().manual_seed(3), labels=labels)
    key[0] = "uncached"
    b = m.sample(2, generator=torch.Generator().manual_seed(3), labels=labels, use_cache=False)
    assert a.shape == (2, 1, T) and a.dtype == torch.float32 and a.abs().max() <= 1
    assert torch.allclose(torch.stack(seen["cached"]), torch.stack(seen["uncached"]), atol=1e-5)
    assert torch.equal(a, b)
    assert len(torch.unique(a)) > 10  # not a constant or near-constant clip
    assert m.training  # sampling leaves the mode alone
    monkeypatch.setattr(wn, "draw_classes", real)
    assert torch.equal(m.sample(2, generator=torch.Generator().manual_seed(3), labels=labels), a)
    assert not torch.equal(m.sample(2, generator=torch.Generator().manual_seed(4), labels=labels), a)
    # greedy (temperature 0) agrees too
    g0 = m.sample(2, generator=torch.Generator().manual_seed(5), labels=labels, temperature=0)
    g1 = m.sample(2, generator=torch.Generator().manual_seed(6), labels=labels, temperature=0, use_cache=False)
    assert torch.equal(g0, g1)
    m.loss({"x": waves(), "y": torch.tensor([0, 1])})["loss"].backward()  # still trains after sampling


def test_mu_law_targets_and_masked_loss():
    m = tiny()
    x = waves()
    x[1, :, 40:] = 0.0  # clip 1 is 40 samples long, zero-padded to T
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, 40:] = False
    q = mu_law_encode(x[:, 0], 255)
    assert torch.equal(m.targets(x), q)
    lp = torch.log_softmax(m.logits(x), dim=2)  # (B, T, Q)
    nll = -lp.gather(2, q[:, :, None])[:, :, 0]  # (B, T) nats
    out = m.loss({"x": x, "mask": mask})
    # pad_loss (the default) trains on every position; bits_per_sample counts the real ones only
    assert torch.allclose(out["loss"], nll.mean(), atol=1e-6)
    assert torch.allclose(out["bits_per_sample"] * math.log(2), nll[mask].mean(), atol=1e-6)
    m = tiny(pad_loss=False)
    out = m.loss({"x": x, "mask": mask})
    assert torch.allclose(out["loss"], nll[mask].mean(), atol=1e-6)
    noisy = x.clone()
    noisy[1, :, 40:] = torch.rand(T - 40) * 2 - 1  # padded samples (targets and later inputs) change
    assert torch.allclose(m.loss({"x": noisy, "mask": mask})["loss"], out["loss"], atol=1e-6)
    assert not torch.allclose(m.loss({"x": noisy})["loss"], m.loss({"x": x})["loss"])  # without the mask they count
    # both clips end by 50: the loss (computed on the first 50 positions only) is still the full one's
    short = mask.clone()
    short[0, 50:] = False
    assert torch.allclose(m.loss({"x": noisy, "mask": short})["loss"],
                          -torch.log_softmax(m.logits(noisy), 2).gather(2, m.targets(noisy)[:, :, None])[:, :, 0][short].mean(),
                          atol=1e-6)
    # mu = quantization - 1
    m16 = tiny(quantization=16)
    assert torch.equal(m16.targets(x), mu_law_encode(x[:, 0], 15)) and m16.logits(x).shape == (2, T, 16)


@pytest.mark.parametrize("Q", [256, 16])
def test_linear_encoding_targets_inputs_and_samples(Q):
    m = tiny(encoding="linear", quantization=Q)
    x = waves()
    q = linear_encode(x[:, 0], Q)
    assert torch.equal(m.targets(x), q) and not torch.equal(q, mu_law_encode(x[:, 0], Q - 1))
    assert m.start_class == Q // 2 == int(linear_encode(torch.zeros(1), Q))  # the input before x_0: silence
    # the inputs are the linear classes too: the loss is the cross-entropy of the net on the shifted targets
    lg = m._net(m._shift(q), None)
    assert torch.allclose(m.logits(x), lg)
    assert torch.allclose(m.loss({"x": x})["loss"], torch.nn.functional.cross_entropy(lg.flatten(0, 1), q.flatten()),
                          atol=1e-6)
    # two waveforms in the same linear bins everywhere are the same data to the model
    assert torch.equal(m.logits(linear_decode(q, Q)[:, None]), m.logits(x))
    s = m.sample(3, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 1, T)
    assert torch.isin(s, linear_decode(torch.arange(Q), Q)).all()  # decoded at the bins' centres
    assert torch.equal(linear_decode(linear_encode(s, Q), Q), s)


def test_bits_and_nll_totals():
    m = tiny()
    x = waves()
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[0, 50:] = False
    batch = {"x": x, "mask": mask}
    with torch.no_grad():
        out = m.loss(batch)
    assert torch.allclose(tiny(pad_loss=False).loss(batch)["bits_per_sample"] * math.log(2),
                          tiny(pad_loss=False).loss(batch)["loss"])
    total, count = m.nll(batch)
    assert int(count) == 2 * T - 14
    assert math.isclose(float(total), float(out["bits_per_sample"]) * int(count), rel_tol=1e-5)


def test_loss_decreases_and_label_matters():
    m = tiny(conditional=True, num_classes=3)
    batch = {"x": waves(), "mask": torch.ones(2, T, dtype=torch.bool), "y": torch.tensor([0, 2])}
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = m.loss(batch)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m.loss(batch)["loss"].item() < 0.7 * first
    x = batch["x"]
    assert not torch.allclose(m.logits(x, torch.tensor([0, 0])), m.logits(x, torch.tensor([1, 1])))
    with pytest.raises(ConfigError, match="class-conditional"):
        m.loss({"x": x})
    with pytest.raises(ConfigError, match="pass labels"):
        m.sample(2, generator=torch.Generator())


def test_config_errors():
    with pytest.raises(ConfigError, match="labelled data"):
        tiny(conditional=True, num_classes=None)
    with pytest.raises(ConfigError, match="audio_length"):
        tiny(audio_length=None)
    for bad, match in [({"quantization": 1}, "quantization"), ({"quantization": 70000}, "quantization"),
                       ({"layers": 0}, "layers"), ({"residual_channels": 0}, "residual_channels"),
                       ({"temperature": -1.0}, "temperature"), ({"encoding": "alaw"}, "encoding.*mulaw, linear")]:
        with pytest.raises(ConfigError, match=match):
            build_config({"model": {"name": "wavenet", **bad}, "data": {"dataset": "fsdd"}})
    cfg = build_config({"model": {"name": "wavenet"}, "data": {"dataset": "fsdd"}})
    assert isinstance(cfg.model, WaveNetConfig) and WaveNet.family == "audio" and cfg.model.encoding == "mulaw"
    assert build_config({"model": {"name": "wavenet", "encoding": "linear"}, "data": {"dataset": "fsdd"}}
                        ).model.encoding == "linear"
    with pytest.raises(ConfigError, match="temperature"):
        tiny().sample(1, generator=torch.Generator(), temperature=-0.5)


def test_classifier_free_guidance():
    """label_dropout trains a "no label" row; guidance w mixes the two logit vectors as
    l_u + w (l_c - l_u): the cached and uncached generators agree; w = 0 ignores the label;
    w = 1 is the conditional model; the mixing is the stated formula."""
    m = tiny(conditional=True, num_classes=3, label_dropout=0.2)
    assert m.cond.num_embeddings == 4  # three classes and "no label"
    with torch.no_grad():
        m.head2.weight.mul_(8)
        m.cond.weight.mul_(20)  # labels that matter, so a wrong label shows up in the samples
    labels = torch.tensor([2, 0])
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    w2 = m.sample(2, generator=g(), labels=labels, guidance=2.0)
    assert torch.equal(w2, m.sample(2, generator=g(), labels=labels, guidance=2.0, use_cache=False))
    plain = m.sample(2, generator=g(), labels=labels)
    assert not torch.equal(w2, plain)
    # w = 0: the unconditional model, whatever label is asked for
    w0 = m.sample(2, generator=g(), labels=labels, guidance=0.0)
    assert torch.equal(w0, m.sample(2, generator=g(), labels=torch.tensor([1, 1]), guidance=0.0))
    assert not torch.equal(w0, plain)
    # the mixing: w = 1 gives the conditional logits, w = 0 the unconditional, w = 3 extrapolates
    c, u = torch.randn(2, 5), torch.randn(2, 5)
    both = torch.cat([c, u])
    assert torch.allclose(WaveNet._guide(both, 2, 1.0), c, atol=1e-6)
    assert torch.equal(WaveNet._guide(both, 2, 0.0), u)
    assert torch.allclose(WaveNet._guide(both, 2, 3.0), 3 * c - 2 * u, atol=1e-5)
    assert torch.equal(WaveNet._guide(c, 2, 3.0), c)  # n rows: nothing to mix
    # w = 1 through the 2n-row path draws what the plain conditional path draws
    y2 = torch.cat([labels, torch.full_like(labels, 3)])
    u01 = torch.rand(T, 2, generator=g())
    with torch.no_grad():
        assert torch.equal(m._generate_cached(y2, u01, 1.0, 1.0), m._generate_cached(labels, u01, 1.0, 1.0))
    # which rows are which: greedy decoding against a step-by-step reference that runs the
    # conditional and the "no label" model separately and mixes them as l_u + 2.5 (l_c - l_u)
    with torch.no_grad():
        q = torch.empty(2, T, dtype=torch.long)
        for t in range(T):
            inp = m._shift(q[:, :t + 1])
            lc, lu = m._net(inp, labels)[:, -1], m._net(inp, torch.full_like(labels, 3))[:, -1]
            q[:, t] = (lu + 2.5 * (lc - lu)).argmax(-1)
    for cached in (True, False):
        greedy = m.sample(2, generator=g(), labels=labels, guidance=2.5, temperature=0, use_cache=cached)
        assert torch.equal(greedy, m.dequantize(q).unsqueeze(1))
    # the model's default guidance comes from its config
    m.cfg.guidance = 2.0
    assert torch.equal(m.sample(2, generator=g(), labels=labels), w2)


def test_label_dropout_trains_the_no_label_row():
    x, y = waves(), torch.tensor([0, 1])
    m = tiny(conditional=True, num_classes=3, label_dropout=0.999)
    torch.manual_seed(0)
    m.loss({"x": x, "y": y})["loss"].backward()
    rows = m.cond.weight.grad.abs().sum(1)  # (4,)
    assert rows[3] > 0 and rows[:3].sum() == 0  # every label dropped: only "no label" learns
    m.zero_grad()
    m.eval()  # evaluation (NLL) never drops labels
    m.loss({"x": x, "y": y})["loss"].backward()
    rows = m.cond.weight.grad.abs().sum(1)
    assert rows[0] > 0 and rows[1] > 0 and rows[3] == 0


def test_guidance_errors():
    with pytest.raises(ConfigError, match="label_dropout > 0"):
        tiny(conditional=True, num_classes=3).sample(2, generator=torch.Generator(), labels=torch.tensor([0, 1]),
                                                     guidance=2.0)
    for bad, match in [({"label_dropout": 1.0, "conditional": True}, "label_dropout"),
                       ({"guidance": 2.0, "conditional": True}, "needs model.label_dropout > 0")]:
        with pytest.raises(ConfigError, match=match):
            build_config({"model": {"name": "wavenet", **bad}, "data": {"dataset": "fsdd"}})
    # an unconditional model made from a guided preset ignores the preset's guidance, refuses an explicit one
    m = tiny(label_dropout=0.1, guidance=2.0)
    assert not m.guided and m.cond is None
    assert m.sample(1, generator=torch.Generator().manual_seed(0)).shape == (1, 1, T)
    with pytest.raises(ConfigError, match="label_dropout > 0"):
        m.sample(1, generator=torch.Generator(), guidance=2.0)
