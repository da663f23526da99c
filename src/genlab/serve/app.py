"""The HTTP API over trained runs (`genlab serve`): create_app(run_dirs) -> FastAPI.

Every answer comes from genlab's own functions, so it equals what the CLI gives for the same
seed and options: Run.sample / draw_samples and genlab.images for /v1/generate, Run.generate for
text, GraphRNN.sample_graphs for graphs, genlab.apply.run_task and apply.io for /v1/apply.
Inference runs in one worker thread per model (batching.Batcher), never on the event loop; a
full queue answers 503 with Retry-After, a slow answer 504, a large body 413, a value genlab
refuses 400 with its one-line message, a schema violation 422. See /tmp/serve/CONTRACT.md.

No `from __future__ import annotations` here: FastAPI resolves the routes' annotations, which name
objects local to create_app (the auth schemes), so they must be evaluated where they are written.
"""

import asyncio
import base64
import hmac
import html
import io
import json
import math
import re
import threading
import time
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Callable

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Security, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from genlab.apply import SAME_MODE, TASKS, result_bytes, run_task, supported_tasks, task_problem
from genlab.apply.edit import check_png_channels
from genlab.apply.inpaint import decode_mask
from genlab.apply.io import decode_images
from genlab.engine.run import Run, load
from genlab.errors import ConfigError, DataError, GenlabError
from genlab.images import encode_images, png_bytes
from genlab.sampling import check_diffusion_options, noise_decoder, sample_labels
from genlab.seed import make_generator
from genlab.serve import schemas as S
from genlab.serve.batching import Batcher, Draw, Job, QueueFull, TextRow, draw_group, text_group
from genlab.serve.metrics import Metrics

STATIC = Path(__file__).parent / "static"
MAX_BODY = S.MAX_UPLOAD  # bytes of a request body (413 above)
MAX_PIXELS = 2**22  # of an uploaded PNG, read from its header before decoding (4 Mpixel)
MAX_NPZ_BYTES = 64 * 2**20  # of an uploaded .npz's arrays once decompressed
PLACEHOLDER = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>genlab serve</title></head><body>"
               "<h1>genlab serve</h1><p>The studio page is not installed; the API is at <a href='/docs'>/docs</a>."
               "</p></body></html>")


@dataclass
class Served:
    """One model being served: its run, its worker and what /v1/models says about it."""
    id: str
    run: Run
    batcher: Batcher
    info: dict


def load_runs(run_dirs: list) -> dict[str, Run]:
    """Load each run once (safetensors checkpoints); the id is the run folder's name."""
    runs: dict[str, Run] = {}
    where: dict[str, Path] = {}
    if not run_dirs:
        raise ConfigError("give at least one RUN_DIR to serve")
    for d in run_dirs:
        p = Path(d)
        rid = p.resolve().name
        if rid in runs:
            raise ConfigError(f"two runs are named {rid!r} ({where[rid]} and {p}); a model id is the run folder's "
                              "name: serve one of them, or rename a folder")
        runs[rid], where[rid] = load(p), p
    return runs


def model_info(rid: str, run: Run) -> dict:
    image, audio = run.family == "image", run.family == "audio"
    conditional = bool(getattr(run.model, "conditional", False))
    if image:  # translation and style runs transform given images and draw none of their own
        tasks = (["generate"] if run.model.draws_samples else []) + supported_tasks(run)
    elif run.family == "text":
        tasks = ["text"]
    elif audio:
        tasks = ["generate"]
    else:
        tasks = ["generate"] if getattr(run.model, "task", None) == "generate" else []
    return {"id": rid, "family": run.family, "model": run.cfg.model_name, "preset": run.cfg.preset,
            "conditional": conditional, "num_classes": run.model.num_classes if conditional else None,
            "tasks": tasks, "image_size": run.meta["native_size"][0] if image else None,
            "channels": run.meta["channels"] if image else None,
            "sample_rate": run.meta["sample_rate"] if audio else None,
            "audio_length": run.meta["audio_length"] if audio else None, "step": run.step}


def field_message(message: str) -> str:
    """genlab's messages name CLI flags (--sampling-steps); the API's fields are sampling_steps
    (and the uploaded `image` is the CLI's --input)."""
    def field(m: re.Match) -> str:
        return "image" if m.group(1) == "input" else m.group(1).replace("-", "_")

    return re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)", field, message)


def _finite(x: Any) -> Any:
    """JSON has no NaN or Infinity: report.json's non-finite numbers become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _json_error(status: int, detail: str, headers: dict | None = None) -> HTTPException:
    return HTTPException(status, detail, headers=headers)


# --------------------------------------------------------------------------- uploads


def upload_kind(data: bytes, field: str, kinds: tuple[str, ...] = ("png", "npz")) -> str:
    """'png' or 'npz' (one of `kinds`) from the upload's first bytes (its name is the client's to
    choose), after checking from the headers that decoding it stays small (no decompression bombs)."""
    expected = "a PNG or an .npz (images uint8 N x C x H x W)" if "npz" in kinds else "a PNG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24 or data[12:16] != b"IHDR":  # the PNG standard puts IHDR first; so must uploads
            raise DataError(f"{field}: not a valid PNG (its first chunk is not IHDR)")
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if w * h > MAX_PIXELS:
            raise DataError(f"{field}: a {w}x{h} PNG is larger than this server decodes ({MAX_PIXELS:,} pixels)")
        return "png"
    if data.startswith(b"PK") and "npz" in kinds:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                total = 0
                for info in z.infolist():
                    with z.open(info) as f:
                        version = np.lib.format.read_magic(f)
                        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                            np.lib.format.read_array_header_2_0
                        shape, _, dtype = read(f)
                    total += math.prod(shape) * dtype.itemsize
        except (OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile) as e:
            raise DataError(f"cannot read {field} as .npz: {e}") from None
        if total > MAX_NPZ_BYTES:
            raise DataError(f"{field}: the .npz holds {total:,} bytes of arrays; at most {MAX_NPZ_BYTES:,} per request")
        return "npz"
    raise DataError(f"{field}: expected {expected}, got {len(data):,} bytes of something else")


async def read_upload(upload: UploadFile | None, field: str) -> bytes | None:
    if upload is None:
        return None
    data = await upload.read(S.MAX_UPLOAD + 1)
    if len(data) > S.MAX_UPLOAD:
        raise _json_error(413, f"{field}: the upload is over {S.MAX_UPLOAD // 2**20} MiB; send a smaller file")
    if not data:
        raise DataError(f"{field}: the uploaded file is empty")
    return data


def apply_work(run: Run, rid: str, task: str, image: bytes | None, mask: bytes | None, fmt: str,
               options: dict) -> bytes:
    """Decode the uploads and run genlab.apply's task on them -> the bytes `genlab apply --out
    y.png|y.npz` writes. Runs in the model's worker."""
    batch = None
    if image is not None:
        kind = upload_kind(image, "image")
        if kind == "png" and task in SAME_MODE:  # as the CLI: translate and edit keep the input's mode
            check_png_channels(io.BytesIO(image), run.meta["channels"], "image")
        batch = decode_images(io.BytesIO(image), kind, run.meta["channels"], "image")
        if len(batch.images) > S.MAX_N:
            raise DataError(f"image: at most {S.MAX_N} images per request, got {len(batch.images)}")
    elif task != "interpolate":
        raise ConfigError(f"image: {task} needs an uploaded image (.png or .npz)")
    if mask is not None:
        if batch is None:
            raise ConfigError("mask: a mask file needs an image to inpaint")
        h, w = batch.images.shape[-2:]
        upload_kind(mask, "mask", ("png",))  # its size is checked before decoding
        options["mask"] = decode_mask(io.BytesIO(mask), h, w, "file")
    if task == "interpolate":  # frames decoded in one batch: cap them as /v1/generate caps n
        rows = max(1, len(batch.images) // 2) if batch is not None else 1
        if rows * (options.get("steps") or 8) > S.MAX_N:
            raise DataError(f"steps: {rows} rows x {options.get('steps') or 8} frames is over {S.MAX_N} images; "
                            "send fewer pairs or fewer steps")
    images, labels, nrow = run_task(run, task, batch, name=f"model {rid}", input_name="image", **options)
    return result_bytes(fmt, task, None if batch is None else batch.images, images, labels, nrow, options)


def text_row(run: Run, req: S.TextRequest, on_piece: Callable[[str], None] | None,
             stopped: Callable[[], bool]) -> TextRow | None:
    """The request as a row that can share forward passes (batching.text_group), or None when
    it runs alone: its prompt or options are refused (Run.generate then says why, as the CLI)."""
    from genlab.models.autoregressive.generation import SamplingConfig

    try:
        ids = run.tokenizer.encode(req.prompt)
        sampling = SamplingConfig(req.temperature, req.top_k, req.top_p, req.repetition_penalty)
        sampling.check()
    except GenlabError:
        return None
    if not ids or req.max_tokens < 0:
        return None
    return TextRow(ids, req.max_tokens, sampling, req.seed, req.stop, on_piece, stopped)


# --------------------------------------------------------------------------- middleware


class Guard:
    """Outermost ASGI layer: refuses bodies over `max_body` bytes (413, before the app parses
    anything) and counts every request in the metrics by route template (e.g.
    /v1/apply/{task}, as the router recorded it in the scope; "other" when nothing matched or
    the body was refused) and status."""

    def __init__(self, app, *, metrics: Metrics, max_body: int, api_key: str | None = None):
        self.app, self.metrics, self.max_body, self.api_key = app, metrics, max_body, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.api_key is not None and scope["path"].startswith("/v1"):
                headers = dict(scope.get("headers", []))
                auth = headers.get(b"authorization", b"")
                given = auth[7:] if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key")
                if given is None or not hmac.compare_digest(given, self.api_key.encode()):
                    # before the body is read: a client without the key costs no memory
                    why = "wrong API key" if given is not None else \
                        "missing API key: send the header Authorization: Bearer KEY (or X-API-Key: KEY)"
                    resp = JSONResponse({"detail": why}, 401, headers={"WWW-Authenticate": "Bearer"})
                    return await resp(scope, receive, send_status)
            body = await self._read_body(scope, receive)
            if body is None:
                mb = self.max_body // 2**20
                resp = JSONResponse({"detail": f"request body over {mb} MiB; send smaller files "
                                               f"(image and mask uploads are at most {mb} MiB)"}, 413)
                return await resp(scope, receive, send_status)
            sent = False

            async def replay():  # the body once, then the client's own messages (disconnects)
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.request(route, status, time.perf_counter() - t0)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole body (at most max_body bytes), or None when it is larger."""
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.max_body:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left; the app will see an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


# --------------------------------------------------------------------------- the app


def create_app(run_dirs: list, *, api_key: str | None = None, max_batch: int = 16, queue: int = 64,
               timeout: float = 60.0, batch_wait_ms: float = 5) -> FastAPI:
    """The FastAPI app serving the runs in `run_dirs` (loaded once, here).

    Args:
        api_key: when set, every /v1 route needs `Authorization: Bearer KEY` or `X-API-Key: KEY`.
        max_batch: images (or text rows) in one forward pass of grouped generate requests.
        queue: requests waiting per model before 503.
        timeout: seconds a request may wait and run before 504.
        batch_wait_ms: how long a generate or text request waits for others to share its forward passes.
    """
    metrics = Metrics()
    served = {rid: Served(rid, run, Batcher(rid, max_batch=max_batch, queue_size=queue, wait_s=batch_wait_ms / 1000,
                                            on_batch=metrics.batch), model_info(rid, run))
              for rid, run in load_runs(run_dirs).items()}
    plot_lock = threading.Lock()  # matplotlib's pyplot is not thread-safe
    # The workers are daemon threads that live as long as the process: they are not stopped at
    # lifespan shutdown, so the app keeps working when a test client runs its lifespan repeatedly.
    app = FastAPI(title="genlab serve", version="1", docs_url=None, redoc_url=None,
                  description="Generate, apply and continue text with trained genlab runs. Errors are "
                              '{"detail": "..."}: 400 values genlab refuses, 401 API key, 404 unknown model or '
                              "task, 413 body too large, 422 schema violations, 503 queue full (Retry-After), "
                              "504 timeout.")
    app.state.served = served
    app.state.metrics = metrics
    app.add_middleware(Guard, metrics=metrics, max_body=MAX_BODY, api_key=api_key)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(GenlabError)
    async def genlab_error(request, e: GenlabError):
        return JSONResponse({"detail": field_message(str(e))}, 400)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, e: RequestValidationError):
        # FastAPI's default echoes the input, which may be an upload or a NaN that JSON cannot hold
        return JSONResponse({"detail": [{"loc": list(err.get("loc", ())), "msg": err.get("msg", ""),
                                         "type": err.get("type", "")} for err in e.errors()]}, 422)

    # ------------------------------------------------------------------ auth
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY (when the server has a key)")
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or X-API-Key: KEY")

    def require_key(cred: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
                    key: Annotated[str | None, Security(key_header)]) -> None:
        if api_key is None:
            return
        given = cred.credentials if cred is not None else key
        if given is None:
            raise _json_error(401, "missing API key: send the header Authorization: Bearer KEY (or X-API-Key: KEY)",
                              {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), api_key.encode()):
            raise _json_error(401, "wrong API key", {"WWW-Authenticate": "Bearer"})

    errors = {c: {"model": S.Error} for c in (400, 401, 404, 413, 503, 504)}
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=errors)

    def get(rid: str) -> Served:
        if rid not in served:
            raise _json_error(404, f"unknown model {rid!r}; GET /v1/models lists: {', '.join(served)}")
        return served[rid]

    async def call(s: Served, job: Job):
        """Queue `job` on the model's worker and await its result within the timeout."""
        try:
            fut = s.batcher.submit(job)
        except QueueFull as e:
            raise _json_error(503, f"{e}; retry in a second", {"Retry-After": "1"}) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except asyncio.TimeoutError:
            fut.cancel()
            raise _json_error(504, f"model {s.id} did not answer within {timeout:g} s (the server's --timeout); "
                                   "ask for fewer images, steps or tokens") from None

    def alone(work: Callable[[], Any], size: int = 1, grad: bool = False) -> Job:
        return Job(fn=lambda payloads: [work()], size=size, grad=grad)

    # ------------------------------------------------------------------ open routes
    @app.get("/healthz", response_model=S.Health)
    def healthz():
        return {"status": "ok", "models": len(served)}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus():
        return PlainTextResponse(metrics.render({rid: s.batcher.depth() for rid, s in served.items()}),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def index():
        page = STATIC / "index.html"
        return FileResponse(page) if page.is_file() else HTMLResponse(PLACEHOLDER)

    if STATIC.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return HTMLResponse(docs_page(app.openapi()))

    # ------------------------------------------------------------------ /v1
    @v1.get("/models", response_model=S.ModelList)
    def models():
        return {"models": [s.info for s in served.values()]}

    @v1.get("/models/{model_id}/report", responses={200: {"content": {"application/json": {}}}})
    def report(model_id: str):
        s = get(model_id)
        try:
            return JSONResponse(_finite(json.loads((s.run.run_dir / "report.json").read_text())))
        except FileNotFoundError:
            raise _json_error(404, f"model {model_id} has no report.json yet; run `genlab evaluate` on it") from None
        except (OSError, ValueError):
            raise _json_error(404, f"model {model_id}'s report.json is unreadable; run `genlab evaluate` again") \
                from None

    @v1.get("/models/{model_id}/loss.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
    def loss_png(model_id: str):
        from genlab.evaluation.html import loss_curve_png

        s = get(model_id)
        with plot_lock:
            png = loss_curve_png(s.run.run_dir)
        if png is None:
            raise _json_error(404, f"model {model_id} has no training log to plot")
        return Response(png, media_type="image/png")

    @v1.post("/generate", responses={200: {"content": {
        "image/png": {}, "application/octet-stream": {},
        "application/json": {"schema": {"anyOf": [{"$ref": "#/components/schemas/ImagesJSON"},
                                                  {"$ref": "#/components/schemas/GraphsJSON"},
                                                  {"$ref": "#/components/schemas/AudioJSON"}]}},
        "audio/wav": {}}}})
    async def generate(req: S.GenerateRequest):
        s = get(req.model)
        run = s.run
        if run.family == "text":
            raise ConfigError(f"model: {req.model} is a text model; use POST /v1/text/generate")
        if "generate" not in s.info["tasks"]:
            does = (f"it transforms given images (POST /v1/apply/{s.info['tasks'][0]}) and draws none"
                    if run.family == "image" else "it predicts links and draws no graphs")
            raise _json_error(404, f"model {req.model} is a {run.cfg.model_name} run: {does}")
        opts = {k: v for k, v in (("sampler", req.sampler), ("steps", req.sampling_steps),
                                  ("guidance", req.guidance), ("eta", req.eta)) if v is not None}
        check_diffusion_options(run, ["sampling_steps" if k == "steps" else k for k in opts], req.model,
                                sampling=True)
        if run.family == "graph":
            return await generate_graphs(s, req)
        if run.family == "audio":
            return await generate_audio(s, req, opts)
        if req.format == "wav":
            raise ConfigError(f"format: wav is for audio models; {req.model} is an image model (png, npz or json)")
        labels = sample_labels(run.model, req.n, req.label)  # bad labels: 400 now, not in a shared batch
        decoder = noise_decoder(run.model, opts)  # checks the options
        if decoder is not None:
            job = Job(fn=partial(draw_group, run), payload=Draw(req.n, req.seed, labels, decoder),
                      key=decoder.key, size=req.n)
        else:  # sampling draws noise at every step: alone, as the CLI would
            job = alone(lambda: run.sample(req.n, seed=req.seed, label=req.label, **opts), size=req.n)
        images, labels = await call(s, job)
        if req.format == "json":
            pngs = await run_in_threadpool(
                lambda: [base64.b64encode(png_bytes(im.permute(1, 2, 0).numpy())).decode() for im in images])
            return {"n": len(images), "shape": list(images.shape),
                    "labels": None if labels is None else labels.tolist(), "images_png": pngs}
        body = await run_in_threadpool(encode_images, req.format, images, labels)
        if req.format == "png":
            return Response(body, media_type="image/png")
        return Response(body, media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="samples.npz"'})

    async def generate_audio(s: Served, req: S.GenerateRequest, opts: dict):
        from genlab.audio import encode_audio, spectrogram_grid_png, wav_bytes

        fmt = req.format if "format" in req.model_fields_set else "wav"
        sample_labels(s.run.model, req.n, req.label)  # bad labels: 400 now
        job = alone(lambda: s.run.sample(req.n, seed=req.seed, label=req.label, **opts), size=req.n)
        clips, labels = await call(s, job)
        sr = s.run.meta["sample_rate"]
        if fmt == "json":
            def encode() -> dict:
                b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
                return {"n": len(clips), "sample_rate": sr, "labels": None if labels is None else labels.tolist(),
                        "audio_wav": [b64(wav_bytes(c, sr)) for c in clips],
                        "spectrograms_png": [b64(spectrogram_grid_png(c[None], sr)) for c in clips]}
            return await run_in_threadpool(encode)
        if fmt == "png":
            return Response(await run_in_threadpool(spectrogram_grid_png, clips, sr), media_type="image/png")
        body = await run_in_threadpool(encode_audio, fmt, clips, sr, labels)
        if fmt == "wav":
            return Response(body, media_type="audio/wav")
        return Response(body, media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="samples.npz"'})

    async def generate_graphs(s: Served, req: S.GenerateRequest):
        from genlab.data.graphs import adjacency_to_edges

        fmt = req.format if "format" in req.model_fields_set else "json"
        if fmt != "json":
            raise ConfigError(f"format: graph models answer json (edge lists), got {fmt!r}")
        if req.label is not None:
            raise ConfigError(f"label: {req.model} is a graph model; graphs have no labels")
        job = alone(lambda: s.run.model.sample_graphs(req.n, generator=make_generator(req.seed)), size=req.n)
        graphs = await call(s, job)
        return {"graphs": [{"num_nodes": len(a), "edges": adjacency_to_edges(a).tolist()} for a in graphs]}

    @v1.post("/apply/{task}", responses={200: {"content": {"image/png": {}, "application/octet-stream": {}}}})
    async def apply_task(task: Annotated[str, PathParam(json_schema_extra={"enum": list(S.TASK_NAMES)})],
                         form: Annotated[S.ApplyForm, Form()]):
        if task not in TASKS:
            raise _json_error(404, f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        s = get(form.model)
        problem = task_problem(s.run, task, name=f"model {form.model}")
        if problem:
            raise _json_error(404, field_message(problem))
        if form.mask is not None and form.mask_name is not None:
            raise ConfigError("mask, mask_name: send a mask file or a mask_name, not both")
        image_bytes = await read_upload(form.image, "image")
        mask_bytes = await read_upload(form.mask, "mask")
        options = {"mask": form.mask_name, "sigma": form.sigma, "seeds": form.seed_pair(), "steps": form.steps,
                   "label": form.label, "sampling_steps": form.sampling_steps, "guidance": form.guidance,
                   "strength": form.strength, "direction": form.direction}
        if task not in ("interpolate", "translate"):  # as the CLI: interpolation is deterministic given its endpoints
            options["seed"] = form.seed
        work = partial(apply_work, s.run, s.id, task, image_bytes, mask_bytes, form.format, options)
        body = await call(s, alone(work, grad=True))  # latent optimisation and guidance need autograd
        if form.format == "png":
            return Response(body, media_type="image/png")
        return Response(body, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{task}.npz"'})

    @v1.post("/text/generate", responses={200: {"content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/TextResponse"}},
        "text/event-stream": {}}}})
    async def text_generate(req: S.TextRequest):
        s = get(req.model)
        if s.run.family != "text":
            raise _json_error(404, f"model {req.model} is a {s.run.cfg.model_name} {s.run.family} model; text "
                                   "generation needs a text run (gpt, lstm)")

        def job(on_piece: Callable[[str], None] | None = None, stopped: Callable[[], bool] = lambda: False) -> Job:
            row = text_row(s.run, req, on_piece, stopped)
            if row is not None:  # shares forward passes with other prompts of its length
                return Job(fn=partial(text_group, s.run), payload=row, key=("text", len(row.ids)))

            def work():  # alone: a request genlab refuses gets its message from Run.generate, as the CLI
                out = []
                for piece in s.run.generate(req.prompt, req.max_tokens, temperature=req.temperature,
                                            top_k=req.top_k, top_p=req.top_p, seed=req.seed, stop=req.stop,
                                            repetition_penalty=req.repetition_penalty):
                    if stopped():
                        break
                    out.append(piece)
                    if on_piece is not None:
                        on_piece(piece)
                return "".join(out)

            return alone(work)

        if not req.stream:
            return {"text": req.prompt + await call(s, job())}
        return await stream_text(s, req, job)

    async def stream_text(s: Served, req: S.TextRequest, job: Callable[..., Job]):
        """Server-sent events: the worker puts ("piece", str), then the job's end puts ("done", text)
        or ("error", exception), on a queue the response drains. Bad input fails before the first
        piece, before the response starts, so it is still a 400."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()  # set when the client goes away or the time is up
        deadline = time.monotonic() + timeout

        def put(item):
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the loop closed (the server is stopping): nobody is listening
                stop.set()

        def finished(f) -> None:  # runs where the worker sets the result: after the job's last piece
            if f.cancelled():
                return
            e = f.exception()
            put(("error", e) if e is not None else ("done", req.prompt + f.result()))

        try:
            fut = s.batcher.submit(job(lambda piece: put(("piece", piece)), stop.is_set))
        except QueueFull as e:
            raise _json_error(503, f"{e}; retry in a second", {"Retry-After": "1"}) from None
        fut.add_done_callback(finished)

        async def next_event():
            try:
                return await asyncio.wait_for(events.get(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                stop.set()
                fut.cancel()
                return ("timeout", None)

        first = await next_event()
        if first[0] == "timeout":
            raise _json_error(504, f"model {s.id} did not start within {timeout:g} s (the server's --timeout)")
        if first[0] == "error":
            raise first[1]

        async def sse():
            kind, value = first
            try:
                while True:
                    if kind == "piece":
                        yield f"data: {json.dumps({'text': value})}\n\n"
                    elif kind == "done":
                        yield f"event: done\ndata: {json.dumps({'text': value})}\n\n"
                        return
                    else:  # an error or the timeout after the stream began: say so, then end
                        detail = (f"timed out after {timeout:g} s" if kind == "timeout" else
                                  field_message(str(value)) if isinstance(value, GenlabError) else "internal error")
                        yield f"event: error\ndata: {json.dumps({'detail': detail})}\n\n"
                        return
                    kind, value = await next_event()
            finally:
                stop.set()  # the client left or the stream ended: the worker stops at its next piece

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.include_router(v1)

    def openapi():
        """FastAPI's schema, with the served model ids as the `model` fields' enum."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for name in ("GenerateRequest", "TextRequest", "ApplyForm"):
                spec["components"]["schemas"][name]["properties"]["model"]["enum"] = list(served)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi
    return app


def docs_page(spec: dict) -> str:
    """A plain, offline API page from the OpenAPI schema (FastAPI's /docs loads Swagger UI from a
    CDN, which an offline machine cannot reach)."""
    schemas = spec.get("components", {}).get("schemas", {})

    def resolve(s: dict) -> dict:
        if "$ref" in s:
            return resolve(schemas[s["$ref"].split("/")[-1]])
        if "allOf" in s:  # FastAPI's form bodies: the form model plus the files
            merged = {"properties": dict(s.get("properties", {}))}
            for part in s["allOf"]:
                merged["properties"].update(resolve(part).get("properties", {}))
            return merged
        return s

    def kind(p: dict) -> str:
        options = p.get("anyOf", [p])
        parts = []
        for o in options:
            o = resolve(o) if "$ref" in o else o
            t = "/".join(map(str, o["enum"])) if "enum" in o else o.get("type", "object")
            bounds = [f"{sym} {o[k]:g}" for k, sym in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                       ("maximum", "<="), ("exclusiveMaximum", "<")) if k in o]
            bounds += [f"length <= {o['maxLength']}"] if "maxLength" in o else []
            parts.append(t + (f" ({', '.join(bounds)})" if bounds else ""))
        return " | ".join(parts)

    out = [f"<h1>{html.escape(spec['info']['title'])}</h1><p>{html.escape(spec['info'].get('description', ''))}</p>",
           "<p>Schema: <a href='/openapi.json'>/openapi.json</a></p>"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            out.append(f"<h2><code>{method.upper()} {html.escape(path)}</code></h2>")
            rows = [(p["name"], p["in"], kind(p.get("schema", {})), "", p.get("description", ""))
                    for p in op.get("parameters", [])]
            for ctype, c in op.get("requestBody", {}).get("content", {}).items():
                body = resolve(c.get("schema", {}))
                rows += [(name, ctype, kind(p), json.dumps(p["default"]) if "default" in p else "",
                          p.get("description", "")) for name, p in body.get("properties", {}).items()]
            if rows:
                out.append("<table><tr><th>field</th><th>in</th><th>type</th><th>default</th><th></th></tr>" +
                           "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                                   for r in rows) + "</table>")
            answers = ", ".join(f"{code} {', '.join(r.get('content', {})) or r.get('description', '')}"
                                for code, r in op.get("responses", {}).items())
            out.append(f"<p>Answers: {html.escape(answers)}</p>")
    style = ("body{font-family:system-ui,sans-serif;margin:1em;max-width:60em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>genlab serve API</title><style>{style}</style></head><body>{''.join(out)}</body></html>")
