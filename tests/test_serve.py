"""`genlab serve`: every endpoint answers what the CLI gives for the same seed, bad input gets
the right 4xx naming the field, concurrent generate requests share forward passes, a full
queue answers 503, and schemathesis finds no 5xx in the OpenAPI schema."""

import base64
import io
import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[test]'")
pytest.importorskip("multipart", reason="python-multipart is missing: pip install -e '.[test]'")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from genlab.apply import apply  # noqa: E402
from genlab.cli import main as cli  # noqa: E402
from genlab.images import encode_images  # noqa: E402
from genlab.serve import create_app  # noqa: E402
from tests.tiny_runs import train_tiny_runs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """One tiny run per kind of model served: conditional VAE (28x28), diffusion (16x16), GPT,
    GraphRNN; plus image files to upload."""
    base = tmp_path_factory.mktemp("serve")
    r = {"base": base, **train_tiny_runs(base, data_root)}
    with np.load(base / "mnist16.npz") as z:
        x16, y16 = z["images"][:2], z["labels"][:2]
    np.savez(base / "x16.npz", images=x16, labels=y16)
    np.savez(base / "low8.npz", images=x16[:, :, ::2, ::2].copy())
    Image.fromarray(x16[0, 0]).save(base / "x16.png")
    rng = np.random.default_rng(0)
    x28 = rng.integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    np.savez(base / "x28.npz", images=x28, labels=np.array([3, 8]))  # labelled: a cVAE fills with one class
    Image.fromarray(x28[0, 0]).save(base / "x28.png")
    for size in (16, 28):
        mask = np.zeros((size, size), np.uint8)
        mask[size // 3:, 2:size // 2] = 255
        Image.fromarray(mask).save(base / f"mask{size}.png")
    return r


@pytest.fixture(scope="module")
def app(runs):
    return create_app([runs[k] for k in ("cvae", "ddpm", "gpt", "graph")])


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def _threaded_client(app) -> TestClient:
    """A client for requests sent from several threads at once. FastAPI (since 0.137) fills its
    router's route cache on the first request without a lock, and each TestClient thread runs its
    own event loop: concurrent first requests could see a half-built cache and answer a bare 404
    (fastapi/fastapi#15974). One request to a /v1 route first, alone, builds it."""
    c = TestClient(app)
    assert c.get("/v1/models").status_code == 200
    return c


def _cli_bytes(tmp_path, *args) -> bytes:
    out = tmp_path / f"cli-{len(list(tmp_path.iterdir()))}{args[-1]}"
    assert cli([*map(str, args[:-1]), "--out", str(out)]) == 0
    return out.read_bytes()


def _npz(data: bytes) -> dict:
    with np.load(io.BytesIO(data)) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------- same answers as the CLI


def test_health_models_static_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok", "models": 4}
    models = {m["id"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["cvae"] | {"step": 0} == {
        "id": "cvae", "family": "image", "model": "vae", "preset": "cvae-mnist", "conditional": True,
        "num_classes": 10, "tasks": ["generate", "inpaint", "interpolate"], "image_size": 28, "channels": 1,
        "sample_rate": None, "audio_length": None, "step": 0}
    assert models["ddpm"]["tasks"] == ["generate", "inpaint", "denoise", "upscale", "interpolate", "edit"]
    assert models["gpt"]["tasks"] == ["text"] and models["gpt"]["family"] == "text"
    assert models["graph"]["tasks"] == ["generate"] and models["graph"]["image_size"] is None
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    docs = client.get("/docs").text
    assert "/v1/generate" in docs and "cdn" not in docs.lower()  # offline: no Swagger UI from a CDN
    spec = client.get("/openapi.json").json()
    assert spec["components"]["schemas"]["GenerateRequest"]["properties"]["model"]["enum"] == list(models)


@pytest.mark.parametrize("model, flags", [
    ("cvae", {"label": 3}),
    ("cvae", {}),
    ("ddpm", {}),  # DPM-Solver++: batched path
    ("ddpm", {"sampler": "ddim", "sampling_steps": 4, "eta": 0.5}),  # stochastic steps: noise drawn up front
])
def test_generate_equals_genlab_sample(client, runs, tmp_path, model, flags):
    n, seed = 6, 5
    args = ["sample", runs[model], "--n", n, "--seed", seed]
    for k, v in flags.items():
        args += ["--" + k.replace("_", "-"), v]
    body = {"model": model, "n": n, "seed": seed, **flags}
    png = client.post("/v1/generate", json=body)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content == _cli_bytes(tmp_path, *args, ".png")
    got, want = _npz(client.post("/v1/generate", json=body | {"format": "npz"}).content), \
        _npz(_cli_bytes(tmp_path, *args, ".npz"))
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    js = client.post("/v1/generate", json=body | {"format": "json"}).json()
    assert js["n"] == n and js["shape"] == list(want["images"].shape)
    assert js["labels"] == (want["labels"].tolist() if "labels" in want else None)
    decoded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(p)))) for p in js["images_png"]]
    assert np.array_equal(np.stack(decoded)[:, None], want["images"])


def test_graphs_equal_genlab_sample(client, runs, tmp_path):
    want = _npz(_cli_bytes(tmp_path, "sample", runs["graph"], "--n", 5, "--seed", 3, ".npz"))
    got = client.post("/v1/generate", json={"model": "graph", "n": 5, "seed": 3}).json()["graphs"]
    assert [g["num_nodes"] for g in got] == want["num_nodes"].tolist()
    for g, adj, k in zip(got, want["adjacency"], want["num_nodes"]):
        a = np.zeros((k, k), np.uint8)
        for i, j in g["edges"]:
            a[i, j] = a[j, i] = 1
        assert np.array_equal(a, adj[:k, :k])


def test_audio_equals_genlab_sample(runs, tmp_path):
    """An audio model answers WAV (its default: the clips in a row, as `genlab sample --out x.wav`),
    .npz, a spectrogram grid, or JSON with one WAV and one spectrogram per clip."""
    import soundfile as sf

    c = TestClient(create_app([runs["audio"]]))
    info = c.get("/v1/models").json()["models"][0]
    assert (info["family"], info["model"], info["sample_rate"], info["audio_length"], info["num_classes"]) == \
        ("audio", "diffwave", 8000, 256, 2)
    body = {"model": "audio", "n": 3, "seed": 2, "label": 1}
    args = ["sample", runs["audio"], "--n", 3, "--seed", 2, "--label", 1]
    wav = c.post("/v1/generate", json=body)
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    assert wav.content == _cli_bytes(tmp_path, *args, ".wav")
    audio, sr = sf.read(io.BytesIO(wav.content), dtype="float32")
    assert sr == 8000 and len(audio) == 3 * 256 + 2 * 2000  # three clips, 0.25 s between them
    got, want = _npz(c.post("/v1/generate", json=body | {"format": "npz"}).content), \
        _npz(_cli_bytes(tmp_path, *args, ".npz"))
    assert got.keys() == want.keys() == {"audio", "sample_rate", "labels"}
    assert all(np.array_equal(got[k], want[k]) for k in want) and want["labels"].tolist() == [1, 1, 1]
    png = c.post("/v1/generate", json=body | {"format": "png"})
    assert png.headers["content-type"] == "image/png" and png.content == (tmp_path / "cli-0.png").read_bytes()
    js = c.post("/v1/generate", json=body | {"format": "json"}).json()
    clips = [sf.read(io.BytesIO(base64.b64decode(w)), dtype="float32")[0] for w in js["audio_wav"]]
    assert js["labels"] == [1, 1, 1] and len(js["spectrograms_png"]) == 3
    assert np.abs(np.stack(clips) - want["audio"]).max() <= 1 / 32767  # 16-bit WAVs of the same clips
    r = c.post("/v1/generate", json=body | {"label": 2})
    assert r.status_code == 400 and "label" in r.json()["detail"]


def test_wav_is_for_audio_models(client):
    r = client.post("/v1/generate", json={"model": "cvae", "n": 2, "format": "wav"})
    assert r.status_code == 400 and "wav is for audio models" in r.json()["detail"]


def test_text_and_stream_equal_genlab_sample(client, runs, tmp_path):
    opts = {"prompt": "ROMEO:", "max_tokens": 40, "seed": 4, "top_k": 8, "temperature": 0.9, "stop": "\n\n"}
    want = _cli_bytes(tmp_path, "sample", runs["gpt"], "--prompt", "ROMEO:", "--max-tokens", 40, "--seed", 4,
                      "--top-k", 8, "--temperature", 0.9, "--stop", "\n\n", ".txt").decode()
    assert client.post("/v1/text/generate", json={"model": "gpt", **opts}).json() == {"text": want}
    r = client.post("/v1/text/generate", json={"model": "gpt", **opts, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    pieces = [json.loads(e.removeprefix("data: "))["text"] for e in events[:-1]]
    assert all(e.startswith("data: ") for e in events[:-1]) and len(pieces) > 1
    assert events[-1] == f"event: done\ndata: {json.dumps({'text': want})}"
    assert "ROMEO:" + "".join(pieces) == want


@pytest.mark.parametrize("model, task, upload, fields", [
    ("ddpm", "inpaint", "x16.npz", {"mask_name": "bottom-half", "sampling_steps": 3, "seed": 2, "format": "npz"}),
    ("ddpm", "inpaint", "x16.png", {"mask": "mask16.png", "sampling_steps": 3, "seed": 1}),
    ("cvae", "inpaint", "x28.npz", {"mask_name": "center", "format": "npz"}),
    ("ddpm", "denoise", "x16.npz", {"sigma": 0.3, "sampling_steps": 3}),
    ("ddpm", "upscale", "low8.npz", {"sampling_steps": 3, "format": "npz"}),
    ("ddpm", "interpolate", None, {"seeds": "1,2", "steps": 4, "sampling_steps": 3}),
    ("cvae", "interpolate", None, {"seeds": "3,4", "label": 5}),
])
def test_apply_equals_genlab_apply(client, runs, tmp_path, model, task, upload, fields):
    base, fmt = runs["base"], fields.get("format", "png")
    form = {k: str(v) for k, v in fields.items() if k != "mask"}
    files = {}
    if upload:
        files["image"] = (upload, (base / upload).read_bytes())
    if "mask" in fields:
        files["mask"] = (fields["mask"], (base / fields["mask"]).read_bytes())
    r = client.post(f"/v1/apply/{task}", data={"model": model, **form}, files=files or None)
    assert r.status_code == 200, r.text
    opts = {"mask": str(base / fields["mask"]) if "mask" in fields else fields.get("mask_name"),
            "sigma": fields.get("sigma"), "steps": fields.get("steps"), "label": fields.get("label"),
            "sampling_steps": fields.get("sampling_steps"),
            "seeds": [int(s) for s in fields["seeds"].split(",")] if "seeds" in fields else None}
    if task != "interpolate":
        opts["seed"] = fields.get("seed", 0)
    out = apply(runs[model], task, input=base / upload if upload else None, out=tmp_path / f"y.{fmt}", **opts)
    if fmt == "png":
        assert r.content == out.read_bytes()
    else:
        got, want = _npz(r.content), _npz(out.read_bytes())
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_extreme_sampling_values_answer(client):
    """Found by schemathesis: a temperature, repetition penalty or top_p that underflows float32
    made torch.multinomial fail (in the CLI too). The limit T -> 0 is greedy, as temperature 0."""
    greedy = client.post("/v1/text/generate", json={"model": "gpt", "prompt": "RO", "max_tokens": 10,
                                                    "temperature": 0}).json()["text"]
    for extreme in ({"temperature": 1e-300}, {"top_p": 1e-300}, {"repetition_penalty": 1e-300},
                    {"temperature": 1e-40, "repetition_penalty": 1e-40}):
        r = client.post("/v1/text/generate", json={"model": "gpt", "prompt": "RO", "max_tokens": 10, **extreme})
        assert r.status_code == 200, (extreme, r.text)
    assert client.post("/v1/text/generate", json={"model": "gpt", "prompt": "RO", "max_tokens": 10,
                                                  "temperature": 1e-300}).json()["text"] == greedy


def test_report_loss_curve_and_metrics(client, runs):
    report = client.get("/v1/models/ddpm/report")
    assert report.status_code == 200 and report.json() == json.loads((runs["ddpm"] / "report.json").read_text())
    png = client.get("/v1/models/ddpm/loss.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert client.get("/v1/models/nope/report").status_code == 404
    client.post("/v1/generate", json={"model": "cvae", "n": 2})
    text = client.get("/metrics").text
    assert 'genlab_requests_total{route="/v1/generate",status="200"}' in text
    assert 'genlab_request_seconds_bucket{route="/v1/generate",le="+Inf"}' in text
    assert 'genlab_queue_depth{model="cvae"} 0' in text
    assert 'genlab_batch_size_count{model="cvae"}' in text


# --------------------------------------------------------------------------- bad input


JSON_CASES = [
    # (route, body, status, fragments the detail must hold)
    ("/v1/generate", {"model": "cvae", "n": "4"}, 422, ["n", "integer"]),
    ("/v1/generate", {"model": "cvae", "n": 4.5}, 422, ["n"]),
    ("/v1/generate", {"model": "cvae", "n": 0}, 422, ["n", "greater than or equal to 1"]),
    ("/v1/generate", {"model": "cvae", "n": 257}, 422, ["n", "less than or equal to 256"]),
    ("/v1/generate", {"model": "cvae", "seed": -1}, 422, ["seed"]),
    ("/v1/generate", {"model": "cvae", "format": "gif"}, 422, ["format"]),
    ("/v1/generate", {"model": "cvae", "sampling_step": 3}, 422, ["sampling_step", "Extra inputs"]),
    ("/v1/generate", {"n": 3}, 422, ["model", "Field required"]),
    ("/v1/generate", {"model": "nope"}, 404, ["unknown model 'nope'", "cvae"]),
    ("/v1/generate", {"model": "cvae", "label": 12}, 400, ["label must be in 0..9"]),
    ("/v1/generate", {"model": "ddpm", "label": 1}, 400, ["label needs a conditional model"]),
    ("/v1/generate", {"model": "ddpm", "sampling_steps": 999}, 400, ["sampling_steps must be in 1..50"]),
    ("/v1/generate", {"model": "ddpm", "guidance": 2.0}, 400, ["guidance needs a class-conditional"]),
    ("/v1/generate", {"model": "cvae", "sampler": "ddim", "eta": 0.1}, 400, ["sampler, eta: diffusion options"]),
    ("/v1/generate", {"model": "gpt"}, 400, ["model: gpt is a text model", "/v1/text/generate"]),
    ("/v1/generate", {"model": "graph", "format": "png"}, 400, ["format: graph models answer json"]),
    ("/v1/generate", {"model": "graph", "label": 1}, 400, ["label"]),
    ("/v1/text/generate", {"model": "cvae"}, 404, ["text generation needs a text run"]),
    ("/v1/text/generate", {"model": "gpt", "prompt": "x" * 10_001}, 422, ["prompt"]),
    ("/v1/text/generate", {"model": "gpt", "max_tokens": 2001}, 422, ["max_tokens"]),
    ("/v1/text/generate", {"model": "gpt", "top_p": 0}, 422, ["top_p"]),
    ("/v1/text/generate", {"model": "gpt", "prompt": "\u4e2d"}, 400, ["outside this run's", "vocabulary"]),
    ("/v1/text/generate", {"model": "gpt", "prompt": "", "stream": True}, 400, ["prompt"]),
]


@pytest.mark.parametrize("route, body, status, fragments", JSON_CASES)
def test_bad_json_input(client, route, body, status, fragments):
    r = client.post(route, json=body)
    assert r.status_code == status, r.text
    detail = json.dumps(r.json()["detail"])
    assert all(f in detail for f in fragments), detail


def test_malformed_json(client):
    r = client.post("/v1/generate", content=b'{"model": "cvae", "n": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = client.post("/v1/generate", content=b'{"model": "cvae", "guidance": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "guidance"]


APPLY_CASES = [
    # (task, form, files (name -> file in runs["base"] or raw bytes), status, fragments)
    ("blur", {"model": "ddpm"}, {"image": "x16.npz"}, 404, ["unknown task 'blur'"]),
    ("denoise", {"model": "cvae", "sigma": "0.3"}, {"image": "x28.png"}, 404, ["denoise works with diffusion"]),
    ("inpaint", {"model": "gpt"}, {"image": "x28.png"}, 404, ["inpaint works with"]),
    ("inpaint", {"model": "nope"}, {"image": "x28.png"}, 404, ["unknown model"]),
    ("inpaint", {"model": "ddpm"}, {}, 400, ["image: inpaint needs an uploaded image"]),
    ("inpaint", {"model": "ddpm"}, {"image": b"GIF89a not an image"}, 400, ["image: expected a PNG or an .npz"]),
    ("inpaint", {"model": "ddpm"}, {"image": b"\x89PNG\r\n\x1a\n" + bytes(40)}, 400, ["not a valid PNG"]),
    ("inpaint", {"model": "ddpm"}, {"image": "x16.npz", "mask": "x16.npz"}, 400, ["mask: expected a PNG, got"]),
    ("interpolate", {"model": "ddpm"}, {}, 400, ["either image", "or seeds"]),
    ("inpaint", {"model": "ddpm"}, {"image": b"PK\x03\x04 broken zip"}, 400, ["cannot read image as .npz"]),
    ("inpaint", {"model": "ddpm"}, {"image": "x28.png"}, 400, ["inpaint input must be 16x16 images, got 28x28"]),
    ("inpaint", {"model": "cvae", "mask_name": "center"}, {"image": "x28.png", "mask": "mask28.png"}, 400,
     ["mask, mask_name"]),
    ("inpaint", {"model": "ddpm"}, {"image": "x16.npz", "mask": "mask28.png"}, 400,
     ["the mask file is 28x28, the images are 16x16"]),
    ("inpaint", {"model": "ddpm", "mask_name": "middle"}, {"image": "x16.npz"}, 422, ["mask_name"]),
    ("denoise", {"model": "ddpm"}, {"image": "x16.npz"}, 400, ["sigma must be > 0"]),
    ("denoise", {"model": "ddpm", "sigma": "-1"}, {"image": "x16.npz"}, 422, ["sigma"]),
    ("denoise", {"model": "ddpm", "sigma": "abc"}, {"image": "x16.npz"}, 422, ["sigma", "number"]),
    ("interpolate", {"model": "ddpm", "seeds": "1"}, {}, 422, ["seeds"]),
    ("interpolate", {"model": "ddpm", "steps": "1", "seeds": "1,2"}, {}, 422, ["steps"]),
    ("interpolate", {"model": "cvae", "seeds": "1,2"}, {}, 400, ["pass label"]),
    ("interpolate", {"model": "ddpm", "seeds": "1,2", "sigma": "0.5"}, {}, 400, ["sigma is not an option"]),
    ("inpaint", {"model": "cvae", "sampling_steps": "3"}, {"image": "x28.png"}, 400, ["sampling_steps: diffusion"]),
]


@pytest.mark.parametrize("task, form, files, status, fragments", APPLY_CASES)
def test_bad_apply_input(client, runs, task, form, files, status, fragments):
    up = {k: (v if isinstance(v, str) else "upload", (runs["base"] / v).read_bytes() if isinstance(v, str) else v)
          for k, v in files.items()}
    r = client.post(f"/v1/apply/{task}", data=form, files=up or None)
    assert r.status_code == status, r.text
    detail = json.dumps(r.json()["detail"])
    assert all(f in detail for f in fragments), detail


def test_oversize_upload_is_413(client):
    big = b"\x89PNG\r\n\x1a\n" + bytes(9 * 2**20)
    r = client.post("/v1/apply/inpaint", data={"model": "ddpm"}, files={"image": ("big.png", big)})
    assert r.status_code == 413 and "over 8 MiB" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while reading
        for _ in range(10):
            yield bytes(2**20)

    r = client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_api_key(runs):
    c = TestClient(create_app([runs["cvae"]], api_key="s3cret"))
    body = {"model": "cvae", "n": 1}
    r = c.post("/v1/generate", json=body)
    assert r.status_code == 401 and "missing API key" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert c.post("/v1/generate", json=body, headers={"Authorization": "Bearer nope"}).json()["detail"] == \
        "wrong API key"
    assert c.get("/v1/models", headers={"X-API-Key": "s3cre"}).status_code == 401
    assert c.post("/v1/generate", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
    # the key is checked before the body: no validation details leak to strangers
    assert c.post("/v1/generate", json={"n": "x"}).status_code == 401
    for open_route in ("/healthz", "/openapi.json", "/docs", "/", "/metrics"):
        assert c.get(open_route).status_code == 200, open_route
    # and before the body is read or limited: without the key a huge body costs nothing (401, not 413)
    r = c.post("/v1/apply/inpaint", content=b"x" * (9 * 2**20), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 401


def test_upload_guards_refuse_before_decoding(client, runs):
    """A PNG whose first chunk is not IHDR could hide its size from the pixel check: refused.
    Interpolation frames are capped like /v1/generate's n."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0)
    raw = b"".join(b"\x00" + bytes(16) for _ in range(16))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"tEXt", b"k\x00v") + chunk(b"IHDR", ihdr) + \
        chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    r = client.post("/v1/apply/denoise", data={"model": "ddpm", "sigma": "0.1"}, files={"image": ("x.png", png)})
    assert r.status_code == 400 and "first chunk is not IHDR" in r.json()["detail"]
    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((16, 1, 16, 16), np.uint8))
    r = client.post("/v1/apply/interpolate", data={"model": "ddpm", "steps": "64"},
                    files={"image": ("x.npz", buf.getvalue())})
    assert r.status_code == 400 and "8 rows x 64 frames" in r.json()["detail"]


# --------------------------------------------------------------------------- batching, queue, timeout


def _count_calls(monkeypatch, obj, name: str, gate: threading.Event | None = None):
    """Wrap obj.name to count its calls (and, with `gate`, to wait for it: a slow model)."""
    calls, entered, original = [], threading.Event(), getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append(len(args[0]))
        entered.set()
        if gate is not None:
            gate.wait(10)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls, entered


@pytest.mark.parametrize("model, method, options", [("cvae", "decode_latent", {}), ("ddpm", "sample_from", {}),
                                                    ("ddpm", "sample_from", {"eta": 1.0})])
def test_concurrent_requests_share_one_forward_pass(runs, monkeypatch, model, method, options):
    app = create_app([runs[model]], max_batch=64, batch_wait_ms=300)
    c = _threaded_client(app)
    run = app.state.served[model].run
    requests = [{"model": model, "n": n, "seed": s, **options} for n, s in ((3, 1), (1, 2), (5, 3), (2, 4))]
    if model == "cvae":
        for body, label in zip(requests, (None, 7, 0, 3)):
            body["label"] = label
    want = [encode_images("png", *run.sample(b["n"], seed=b["seed"], label=b.get("label"), **options))
            for b in requests]
    calls, _ = _count_calls(monkeypatch, run.model, method)
    got = [None] * len(requests)

    def post(i):
        got[i] = c.post("/v1/generate", json=requests[i]).content

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == want  # each request got what `genlab sample --out x.png` gives alone
    assert len(calls) < len(requests) and sum(calls) == sum(b["n"] for b in requests), calls
    passes = [line for line in c.get("/metrics").text.splitlines()
              if line.startswith(f'genlab_batch_size_count{{model="{model}"}}')]
    assert passes == [f'genlab_batch_size_count{{model="{model}"}} {len(calls)}']


def _post_text(c, body: dict) -> str:
    """The answer's text; for a stream, checks the events and that the pieces join to the text."""
    r = c.post("/v1/text/generate", json=body)
    assert r.status_code == 200, r.text
    if not body.get("stream"):
        return r.json()["text"]
    events = [e for e in r.text.split("\n\n") if e]
    pieces = [json.loads(e.removeprefix("data: "))["text"] for e in events[:-1]]
    assert all(e.startswith("data: ") for e in events[:-1]) and events[-1].startswith("event: done\n")
    text = json.loads(events[-1].split("data: ", 1)[1])["text"]
    assert body["prompt"] + "".join(pieces) == text
    return text


def _concurrent_text(runs, monkeypatch, requests):
    """Each request's text when posted concurrently, what Run.generate gives it alone, and the
    batch size of every forward_step call meanwhile."""
    app = create_app([runs["gpt"]], max_batch=64, batch_wait_ms=300)
    c = _threaded_client(app)
    run = app.state.served["gpt"].run
    opts = ("max_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "stop", "seed")
    want = [b["prompt"] + "".join(run.generate(b["prompt"], **{k: b[k] for k in opts if k in b})) for b in requests]
    calls, _ = _count_calls(monkeypatch, run.model, "forward_step")
    got = [None] * len(requests)

    def post(i):
        got[i] = _post_text(c, {"model": "gpt", **requests[i]})

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return got, want, calls, c


def test_concurrent_text_requests_share_forward_passes(runs, monkeypatch):
    # one prompt, a seed and options per request; 40 tokens cross the tiny GPT's window (16) often
    requests = [{"prompt": "ROMEO:", "max_tokens": 40, "seed": 1},
                {"prompt": "ROMEO:", "max_tokens": 40, "seed": 2, "top_k": 5, "temperature": 0.8, "stream": True},
                {"prompt": "ROMEO:", "max_tokens": 25, "seed": 3, "top_p": 0.9, "repetition_penalty": 1.3},
                {"prompt": "ROMEO:", "max_tokens": 40, "seed": 4, "stop": "d;", "stream": True},
                {"prompt": "ROMEO:", "max_tokens": 40, "seed": 5, "temperature": 0}]
    got, want, calls, c = _concurrent_text(runs, monkeypatch, requests)
    assert got == want  # each equals its request served alone (exactly: see generation.generate_rows)
    assert len(set(want)) == len(want)
    alone = sum(b["max_tokens"] for b in requests)  # forward passes one at a time (at least)
    assert max(calls) == len(requests) and len(calls) < alone / 2, calls
    assert len(want[3]) < len("ROMEO:") + 40  # the stop row left early
    passes = [line for line in c.get("/metrics").text.splitlines()
              if line.startswith('genlab_batch_size_sum{model="gpt"}')]
    assert passes == [f'genlab_batch_size_sum{{model="gpt"}} {len(requests)}']


def test_concurrent_text_requests_of_different_lengths_answer_right(runs, monkeypatch):
    requests = [{"prompt": p, "max_tokens": 30, "seed": i, "stream": i % 2 == 0}
                for i, p in enumerate(["ROMEO:", "RO", "ROMEO:", "OR", "ROME", "a" * 40])]
    got, want, calls, _ = _concurrent_text(runs, monkeypatch, requests)
    assert got == want


def test_generate_rows_equal_generate_ids_alone():
    """The batched loop directly: GPT (window jumps) and LSTM, per-row options and lengths."""
    import torch

    from genlab.models.autoregressive.generation import SamplingConfig, generate_ids, generate_rows
    from genlab.models.autoregressive.gpt import GPT, GPTConfig
    from genlab.models.autoregressive.lstm import LSTM, LSTMConfig

    torch.manual_seed(0)
    for m in (GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)),
              LSTM(LSTMConfig(vocab_size=11, n_embd=8, hidden=16, n_layer=2, dropout=0.0))):
        prompt = torch.tensor([[1, 2, 3], [4, 5, 6], [1, 2, 3]])
        lengths = [30, 12, 0]
        opts = [SamplingConfig(1.3, 8, None, 1.2), SamplingConfig(0.7, None, 0.8), SamplingConfig()]
        rows = list(generate_rows(m, prompt, lengths, opts, [torch.Generator().manual_seed(i) for i in range(3)],
                                  done=[False] * 3))
        assert len(rows) == 30
        for i in range(3):
            alone = [int(t) for t in generate_ids(m, prompt[i:i + 1], lengths[i], opts[i],
                                                  generator=torch.Generator().manual_seed(i))]
            assert [r[i] for r in rows if r[i] is not None] == alone


def test_full_queue_is_503_and_slow_answer_504(runs, monkeypatch):
    app = create_app([runs["cvae"]], queue=1, timeout=5)
    c = _threaded_client(app)
    gate = threading.Event()
    _, entered = _count_calls(monkeypatch, app.state.served["cvae"].run.model, "decode_latent", gate)
    codes = {}

    def post(name):
        codes[name] = c.post("/v1/generate", json={"model": "cvae", "n": 1}).status_code

    a = threading.Thread(target=post, args=("a",))
    a.start()
    assert entered.wait(10)  # a is running (and blocked) in the worker
    b = threading.Thread(target=post, args=("b",))
    b.start()
    deadline = time.monotonic() + 10
    while app.state.served["cvae"].batcher.depth() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    r = c.post("/v1/generate", json={"model": "cvae", "n": 1})  # b holds the one queue slot
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "retry" in r.json()["detail"]
    gate.set()
    a.join(10)
    b.join(10)
    assert codes == {"a": 200, "b": 200}

    slow = create_app([runs["cvae"]], timeout=0.2)
    gate = threading.Event()
    _count_calls(monkeypatch, slow.state.served["cvae"].run.model, "decode_latent", gate)
    r = TestClient(slow).post("/v1/generate", json={"model": "cvae", "n": 1})
    gate.set()
    assert r.status_code == 504 and "0.2 s" in r.json()["detail"]


def test_duplicate_run_names_refused(runs, tmp_path):
    from genlab.errors import ConfigError

    with pytest.raises(ConfigError, match="two runs are named 'cvae'"):
        create_app([runs["cvae"], runs["cvae"]])


# --------------------------------------------------------------------------- genlab serve


def test_cli_serve_errors_are_one_line(runs, capsys):
    import socket

    assert cli(["serve", str(runs["cvae"]), "--port", "70000"]) == 2
    assert capsys.readouterr().err == "genlab: error: --port must be in 0..65535, got 70000\n"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli(["serve", str(runs["cvae"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"genlab: error: --host 127.0.0.1 --port {port}: cannot listen there") and err.count("\n") == 1
    assert cli(["serve", str(runs["cvae"]), str(runs["cvae"]), "--port", "0"]) == 2
    assert "two runs are named 'cvae'" in capsys.readouterr().err


def test_cli_serve_answers_on_loopback(runs):
    """`genlab serve RUN --port 0 --api-key KEY` in its own process: it says where it listens,
    answers /healthz openly and /v1 only with the key, and stops on SIGTERM without a traceback."""
    import os
    import re
    import subprocess
    import sys

    import httpx

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "serve", str(runs["cvae"]), "--port", "0",
                             "--api-key", "k", "--threads", "1"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "serving" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
        url = re.search(r"at (http://\S+/) ", line).group(1)
        health = None
        for _ in range(50):  # the socket listens at once; uvicorn starts answering a moment later
            try:
                health = httpx.get(url + "healthz", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health.json() == {"status": "ok", "models": 1}
        assert httpx.get(url + "v1/models", timeout=5).status_code == 401
        models = httpx.get(url + "v1/models", headers={"Authorization": "Bearer k"}, timeout=5).json()
        assert [m["id"] for m in models["models"]] == ["cvae"]
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal: the status says SIGTERM
        assert proc.wait(30) in (0, -15)
    assert "Traceback" not in proc.stderr.read()


# --------------------------------------------------------------------------- schemathesis


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_schema_finds_no_5xx(app, mode):
    """Schemathesis generates requests from /openapi.json (valid ones, then ones that break the
    schema) for every operation, text streaming included; none may get a 5xx. (A plain
    hypothesis test over each operation's strategy: schemathesis.pytest.from_fixture fails on
    pytest 9, whose nodes no longer have `_nodeid`.)"""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) == 8
    nothing_to_break = []
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        @settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case):
            case.call_and_validate(checks=[not_a_server_error])

        try:
            no_server_error()
        except Unsatisfiable:  # negative mode: an operation without parameters has no invalid request
            nothing_to_break.append(operation.path)
    assert nothing_to_break == ([] if mode == "positive" else ["/healthz", "/metrics"])
