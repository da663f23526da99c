// genlab studio: a plain script over the HTTP API of `genlab serve` (see /docs).
// No build step and no external resources: the page must work offline.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "genlab.apiKey";
  const PAD = 2; // genlab.images.make_grid's padding between the images of a grid

  const state = {
    models: [],
    model: null,       // the selected entry of GET /v1/models
    grid: null,        // {n, nrow, h, w} of the grid on show
    source: null,      // canvas (h x w) with the image to inpaint
    mask: null,        // canvas (h x w): black = keep, white = fill
    painting: null,    // last point of the stroke being drawn
    textAbort: null,   // AbortController of the running text stream
    urls: {},          // object URLs on show, revoked when replaced
  };

  // ------------------------------------------------------------------ status line and API calls

  function setStatus(text, kind = "info") {
    const el = $("status");
    el.textContent = text;
    el.dataset.kind = kind;
  }

  /** The API's {"detail": ...} as one line: a string, or FastAPI's list of field errors. */
  function detailText(detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((e) => {
        const loc = (e.loc || []).filter((p) => p !== "body").join(".");
        return loc ? `${loc}: ${e.msg}` : e.msg;
      }).join("; ");
    }
    return JSON.stringify(detail);
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function headers(extra = {}) {
    const h = { ...extra };
    const key = $("api-key").value.trim();
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  /** fetch() with the API key; throws ApiError with the server's message on a non-2xx answer. */
  async function api(path, options = {}) {
    let res;
    try {
      res = await fetch(path, { ...options, headers: headers(options.headers) });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, `cannot reach the server (${e.message})`);
    }
    if (res.ok) return res;
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      if (body && body.detail !== undefined) message = `${res.status}: ${detailText(body.detail)}`;
    } catch (_) { /* not JSON: keep the status line */ }
    if (res.status === 401) message += " (enter the server's API key above)";
    if (res.status === 503) message += ` (server busy; retry in ${res.headers.get("Retry-After") || "a few"} s)`;
    throw new ApiError(res.status, message);
  }

  function showError(e, what) {
    if (e && e.name === "AbortError") return;
    setStatus(`${what} failed: ${e.message || e}`, "error");
  }

  /** Run `fn` with `button` disabled and a busy status; errors go to the status line. */
  async function busy(button, what, fn) {
    button.disabled = true;
    setStatus(`${what}...`, "busy");
    const t0 = performance.now();
    try {
      const note = await fn();
      const s = ((performance.now() - t0) / 1000).toFixed(2);
      setStatus(`${note || what + " done"} (${s} s)`, "ok");
    } catch (e) {
      showError(e, what);
    } finally {
      button.disabled = false;
    }
  }

  function showBlob(img, blob, slot) {
    if (state.urls[slot]) URL.revokeObjectURL(state.urls[slot]);
    state.urls[slot] = URL.createObjectURL(blob);
    img.src = state.urls[slot];
    return img.decode().catch(() => { throw new Error("the server's image could not be decoded"); });
  }

  function intValue(id) {
    const v = $(id).value.trim();
    return v === "" ? null : Number(v);
  }

  // ------------------------------------------------------------------ models

  async function loadModels() {
    setStatus("Loading models...", "busy");
    let models;
    try {
      models = (await (await api("/v1/models")).json()).models;
    } catch (e) {
      $("model").innerHTML = '<option value="">(no models)</option>';
      showPanels(null);
      showError(e, "Loading the models");
      return;
    }
    state.models = models;
    const sel = $("model");
    const previous = sel.value || sessionStorage.getItem("genlab.model");
    sel.innerHTML = "";
    for (const m of models) {
      const o = document.createElement("option");
      o.value = m.id;
      o.textContent = `${m.id} (${m.model || m.family})`;
      sel.append(o);
    }
    if (!models.length) {
      sel.innerHTML = '<option value="">(no models)</option>';
      setStatus("The server serves no models.", "error");
      return;
    }
    if (models.some((m) => m.id === previous)) sel.value = previous;
    setStatus(`${models.length} model${models.length > 1 ? "s" : ""} ready`, "ok");
    await selectModel();
  }

  function showPanels(m) {
    const family = m ? m.family : null;
    const tasks = m ? m.tasks || [] : [];
    $("image-panel").hidden = !(["image", "graph", "audio"].includes(family) && tasks.includes("generate"));
    $("inpaint-panel").hidden = !(family === "image" && tasks.includes("inpaint"));
    $("text-panel").hidden = family !== "text";
    $("run-panel").hidden = !m;
  }

  async function selectModel() {
    const m = state.models.find((x) => x.id === $("model").value) || null;
    state.model = m;
    showPanels(m);
    if (!m) return;
    sessionStorage.setItem("genlab.model", m.id);
    const size = m.image_size ? `, ${m.image_size}x${m.image_size}x${m.channels}` : "";
    const classes = m.conditional ? `, ${m.num_classes} classes` : "";
    $("model-info").textContent = `${m.family} / ${m.model || "?"}${m.preset ? " (" + m.preset + ")" : ""}`
      + `${size}${classes}, step ${m.step ?? "?"}; tasks: ${(m.tasks || []).join(", ") || "none"}`;

    // the generate form: a label picker for conditional models, sampler options for diffusion
    const label = $("label");
    label.innerHTML = '<option value="">balanced</option>';
    for (let k = 0; k < (m.conditional ? m.num_classes || 0 : 0); k++) {
      label.add(new Option(String(k), String(k)));
    }
    $("label-field").hidden = !m.conditional || !["image", "audio"].includes(m.family);
    const diffusion = m.model === "diffusion" || m.model === "diffwave";
    for (const el of document.querySelectorAll(".diffusion-only")) el.hidden = !diffusion;
    $("guidance").disabled = !(diffusion && m.conditional);
    $("guidance").title = $("guidance").disabled ? "guidance needs a class-conditional diffusion run" : "";
    $("grid").hidden = m.family !== "image";
    $("graphs").hidden = m.family !== "graph";
    $("clips").hidden = m.family !== "audio";
    $("generate").textContent = m.family === "graph" ? "Generate graphs" : "Generate";
    if (!state.grid || state.grid.model !== m.id) clearGrid();
    if (m.family === "image" && m.image_size) resetInpaint(m.image_size, m.image_size);
    await loadRun(m);
  }

  // ------------------------------------------------------------------ report and loss curves

  function fmt(v) {
    if (typeof v !== "number") return v === null || v === undefined ? "" : String(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(3) : v.toPrecision(5).replace(/\.?0+$/, "");
  }

  async function loadRun(m) {
    const body = $("report").tBodies[0];
    body.innerHTML = "";
    $("report-note").textContent = "";
    try {
      const report = await (await api(`/v1/models/${encodeURIComponent(m.id)}/report`)).json();
      const metrics = report.metrics || {};
      for (const [name, entry] of Object.entries(metrics)) {
        const e = entry !== null && typeof entry === "object" ? entry : { value: entry };
        const tr = body.insertRow();
        for (const v of [name, fmt(e.value), fmt(e.n), e.extractor || ""]) tr.insertCell().textContent = v;
      }
      const bits = [`step ${report.step ?? "?"}`];
      if (report.stop_reason) bits.push(`stopped by ${report.stop_reason}`);
      if (!Object.keys(metrics).length) bits.push("no metrics in the report");
      $("report-note").textContent = bits.join(", ");
    } catch (e) {
      $("report-note").textContent = e.status === 404 ? "No report for this run (run genlab evaluate)."
        : `Report: ${e.message}`;
      if (e.status !== 404) showError(e, "Loading the report");
    }
    const loss = $("loss");
    try {
      const blob = await (await api(`/v1/models/${encodeURIComponent(m.id)}/loss.png`)).blob();
      await showBlob(loss, blob, "loss");
      loss.hidden = false;
      $("loss-note").textContent = "";
    } catch (e) {
      loss.hidden = true;
      $("loss-note").textContent = e.status === 404 ? "No training log for loss curves." : `Loss curves: ${e.message}`;
    }
  }

  // ------------------------------------------------------------------ generate

  function clearGrid() {
    state.grid = null;
    $("grid").removeAttribute("src");
    $("grid-caption").textContent = "";
    $("graphs").innerHTML = "";
    $("clips").innerHTML = "";
  }

  async function generate() {
    const m = state.model;
    if (!m) return;
    const body = { model: m.id, n: intValue("n") ?? 16, seed: intValue("seed") ?? 0 };
    body.format = m.family === "graph" || m.family === "audio" ? "json" : "png";
    if (m.conditional && m.family !== "graph" && $("label").value !== "") body.label = Number($("label").value);
    if (m.model === "diffusion" || m.model === "diffwave") {
      if (intValue("sampling-steps") !== null) body.sampling_steps = intValue("sampling-steps");
      if (!$("guidance").disabled && $("guidance").value.trim() !== "") body.guidance = Number($("guidance").value);
    }
    await busy($("generate"), "Generating", async () => {
      const res = await api("/v1/generate", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      if (m.family === "graph") {
        const graphs = (await res.json()).graphs || [];
        drawGraphs(graphs);
        return `Generated ${graphs.length} graphs`;
      }
      if (m.family === "audio") {
        const clips = await res.json();
        showClips(clips);
        return `Generated ${clips.n} clip${clips.n > 1 ? "s" : ""}`;
      }
      const img = $("grid");
      await showBlob(img, await res.blob(), "grid");
      // the grid's layout is genlab's make_grid: ceil(sqrt(n)) per row, PAD pixels around each image
      const nrow = Math.max(1, Math.ceil(Math.sqrt(body.n)));
      const h = m.image_size || Math.round((img.naturalWidth - PAD) / nrow - PAD);
      state.grid = { model: m.id, n: body.n, nrow, h, w: h };
      $("grid-caption").textContent = `seed ${body.seed}` + (body.label !== undefined ? `, label ${body.label}` : "")
        + ($("inpaint-panel").hidden ? "" : " - click an image to inpaint it");
      if (!$("inpaint-panel").hidden) pickCell(0);
      return `Generated ${body.n} image${body.n > 1 ? "s" : ""}`;
    });
  }

  /** One row per generated clip: its spectrogram and a player. */
  function showClips(clips) {
    const box = $("clips");
    box.innerHTML = "";
    clips.audio_wav.forEach((wav, i) => {
      const fig = document.createElement("figure");
      fig.className = "clip";
      const img = document.createElement("img");
      img.src = `data:image/png;base64,${clips.spectrograms_png[i]}`;
      img.alt = `spectrogram of clip ${i}`;
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.src = `data:audio/wav;base64,${wav}`;
      const cap = document.createElement("figcaption");
      cap.textContent = `clip ${i}` + (clips.labels ? `, label ${clips.labels[i]}` : "");
      fig.append(img, audio, cap);
      box.append(fig);
    });
  }

  /** Copy image i of the grid on show into the inpainting canvas. */
  function pickCell(i) {
    const g = state.grid;
    const img = $("grid");
    if (!g || !g.h || !img.naturalWidth || i < 0 || i >= g.n) return false;
    const r = Math.floor(i / g.nrow), c = i % g.nrow;
    resetInpaint(g.h, g.w);
    const ctx = state.source.getContext("2d");
    ctx.drawImage(img, PAD + c * (g.w + PAD), PAD + r * (g.h + PAD), g.w, g.h, 0, 0, g.w, g.h);
    render();
    $("inpaint-canvas").dataset.source = `grid image ${i}`;
    return true;
  }

  function onGridClick(ev) {
    const g = state.grid;
    const img = $("grid");
    if (!g || $("inpaint-panel").hidden) return;
    const rect = img.getBoundingClientRect();
    const scale = img.naturalWidth / rect.width;
    const x = (ev.clientX - rect.left) * scale, y = (ev.clientY - rect.top) * scale;
    const c = Math.floor((x - PAD / 2) / (g.w + PAD)), r = Math.floor((y - PAD / 2) / (g.h + PAD));
    if (c < 0 || c >= g.nrow || r < 0) return;
    const i = r * g.nrow + c;
    if (pickCell(i)) setStatus(`Picked image ${i} for inpainting: paint the part to fill`, "info");
  }

  function drawGraphs(graphs) {
    const box = $("graphs");
    box.innerHTML = "";
    const ink = getComputedStyle(document.body).color;
    for (const g of graphs) {
      const cv = document.createElement("canvas");
      cv.width = cv.height = 120;
      const ctx = cv.getContext("2d");
      const k = g.num_nodes || 0;
      const pos = Array.from({ length: k }, (_, i) => [
        60 + 48 * Math.cos((2 * Math.PI * i) / Math.max(k, 1)), 60 + 48 * Math.sin((2 * Math.PI * i) / Math.max(k, 1))]);
      ctx.strokeStyle = ink; ctx.fillStyle = ink; ctx.lineWidth = 1;
      for (const [a, b] of g.edges || []) {
        if (!pos[a] || !pos[b]) continue;
        ctx.beginPath(); ctx.moveTo(...pos[a]); ctx.lineTo(...pos[b]); ctx.stroke();
      }
      for (const p of pos) { ctx.beginPath(); ctx.arc(p[0], p[1], 3, 0, 2 * Math.PI); ctx.fill(); }
      cv.title = `${k} nodes, ${(g.edges || []).length} edges`;
      box.append(cv);
    }
  }

  // ------------------------------------------------------------------ inpainting canvas

  function offscreen(w, h, fill) {
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    const ctx = c.getContext("2d");
    ctx.fillStyle = fill; ctx.fillRect(0, 0, w, h);
    return c;
  }

  function resetInpaint(h, w) {
    if (!state.source || state.source.width !== w || state.source.height !== h) {
      state.source = offscreen(w, h, "#000");
      $("brush").max = String(Math.max(4, Math.round(w / 2)));
      $("brush").value = String(Math.max(1, Math.round(w / 8)));
    }
    state.mask = offscreen(w, h, "#000");
    const cv = $("inpaint-canvas");
    const scale = Math.max(1, Math.ceil(320 / w));
    cv.width = w * scale; cv.height = h * scale;
    $("inpaint-result").removeAttribute("src");
    render();
  }

  /** Number of mask pixels the server will fill (L > 127, as genlab's mask reader thresholds). */
  function maskCount() {
    const m = state.mask;
    if (!m) return 0;
    const d = m.getContext("2d").getImageData(0, 0, m.width, m.height).data;
    let k = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] > 127) k++;
    return k;
  }

  function render() {
    const cv = $("inpaint-canvas");
    const ctx = cv.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, cv.width, cv.height);
    if (!state.source) return;
    ctx.drawImage(state.source, 0, 0, cv.width, cv.height);
    const m = state.mask, w = m.width, h = m.height;
    const d = m.getContext("2d").getImageData(0, 0, w, h).data;
    const over = document.createElement("canvas");
    over.width = w; over.height = h;
    const octx = over.getContext("2d");
    const o = octx.createImageData(w, h);
    let k = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] > 127) { o.data[i] = 255; o.data[i + 1] = 40; o.data[i + 2] = 140; o.data[i + 3] = 170; k++; }
    }
    octx.putImageData(o, 0, 0);
    ctx.drawImage(over, 0, 0, cv.width, cv.height);
    cv.dataset.maskPixels = String(k);
  }

  function canvasPoint(ev) {
    const cv = $("inpaint-canvas");
    const rect = cv.getBoundingClientRect();
    return [(ev.clientX - rect.left) / rect.width * state.mask.width,
            (ev.clientY - rect.top) / rect.height * state.mask.height];
  }

  function paint(from, to) {
    const ctx = state.mask.getContext("2d");
    const size = Number($("brush").value);
    ctx.strokeStyle = ctx.fillStyle = $("erase").checked ? "#000" : "#fff";
    ctx.lineWidth = size;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    if (from) { ctx.moveTo(...from); ctx.lineTo(...to); ctx.stroke(); }
    else { ctx.arc(to[0], to[1], size / 2, 0, 2 * Math.PI); ctx.fill(); }
    render();
  }

  function onPointerDown(ev) {
    if (!state.mask || ev.button > 0) return;
    ev.preventDefault();
    ev.target.setPointerCapture(ev.pointerId);
    state.painting = canvasPoint(ev);
    paint(null, state.painting);
  }

  function onPointerMove(ev) {
    if (!state.painting) return;
    ev.preventDefault();
    const p = canvasPoint(ev);
    paint(state.painting, p);
    state.painting = p;
  }

  function onPointerUp() { state.painting = null; }

  function loadFile(file) {
    const m = state.model;
    if (!file || !m || !m.image_size) return;
    const img = new Image();
    const url = URL.createObjectURL(file);
    img.onload = () => {
      const s = m.image_size;
      resetInpaint(s, s);
      const ctx = state.source.getContext("2d");
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(img, 0, 0, s, s);
      URL.revokeObjectURL(url);
      render();
      $("inpaint-canvas").dataset.source = file.name;
      const resized = img.naturalWidth !== s || img.naturalHeight !== s;
      setStatus(`Loaded ${file.name}${resized ? ` (resized from ${img.naturalWidth}x${img.naturalHeight} to ${s}x${s})` : ""}:`
        + " paint the part to fill", "info");
    };
    img.onerror = () => { URL.revokeObjectURL(url); setStatus(`cannot read ${file.name} as an image`, "error"); };
    img.src = url;
  }

  const toBlob = (canvas) => new Promise((ok, fail) =>
    canvas.toBlob((b) => (b ? ok(b) : fail(new Error("cannot encode the canvas as PNG"))), "image/png"));

  async function inpaint() {
    const m = state.model;
    if (!m || !state.source) return;
    if (!maskCount()) {
      setStatus("Paint over the image first: the mask selects no pixel to fill", "error");
      return;
    }
    await busy($("inpaint"), "Inpainting", async () => {
      const form = new FormData();
      form.append("model", m.id);
      form.append("image", await toBlob(state.source), "image.png");
      form.append("mask", await toBlob(state.mask), "mask.png");
      form.append("seed", String(intValue("inpaint-seed") ?? 0));
      form.append("format", "png");
      if (m.model === "diffusion") {
        if (intValue("sampling-steps") !== null) form.append("sampling_steps", String(intValue("sampling-steps")));
        if (!$("guidance").disabled && $("guidance").value.trim() !== "") form.append("guidance", $("guidance").value);
      }
      const res = await api("/v1/apply/inpaint", { method: "POST", body: form });
      await showBlob($("inpaint-result"), await res.blob(), "inpaint");
      return `Inpainted ${maskCount()} pixels`;
    });
  }

  // ------------------------------------------------------------------ text streaming

  /** Parse one server-sent event block into {event, data}. */
  function parseEvent(block) {
    let event = "message";
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith(":")) continue; // comment / keep-alive
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? "" : line.slice(i + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    return { event, data: data.join("\n") };
  }

  async function streamText() {
    const m = state.model;
    if (!m) return;
    const body = {
      model: m.id, prompt: $("prompt").value, stream: true,
      max_tokens: intValue("max-tokens") ?? 200, temperature: Number($("temperature").value || 1),
      seed: intValue("text-seed") ?? 0,
    };
    if (intValue("top-k") !== null) body.top_k = intValue("top-k");
    if ($("top-p").value.trim() !== "") body.top_p = Number($("top-p").value);
    const out = $("text-output");
    out.textContent = "";
    const abort = new AbortController();
    state.textAbort = abort;
    $("stop").disabled = false;
    let pieces = 0;
    await busy($("stream"), "Streaming text", async () => {
      try {
        const res = await api("/v1/text/generate", {
          method: "POST", headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
          body: JSON.stringify(body), signal: abort.signal,
        });
        if (!(res.headers.get("Content-Type") || "").includes("text/event-stream")) {
          out.textContent = (await res.json()).text; // a server that does not stream: show the whole text
          return "Generated text";
        }
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = "";
        let done = false;
        while (!done) {
          const chunk = await reader.read();
          if (chunk.done) break;
          buf += decoder.decode(chunk.value, { stream: true });
          const blocks = buf.split(/\r?\n\r?\n/);
          buf = blocks.pop();
          for (const block of blocks) {
            if (!block.trim()) continue;
            const ev = parseEvent(block);
            let data;
            try { data = JSON.parse(ev.data); } catch (_) { data = { text: ev.data }; }
            if (ev.event === "error" || (data && data.detail !== undefined)) {
              throw new ApiError(0, detailText(data.detail ?? ev.data));
            }
            if (ev.event === "done") {
              if (typeof data.text === "string") out.textContent = data.text;
              done = true;
              break;
            }
            if (typeof data.text === "string") {
              out.append(data.text);
              pieces++;
              out.scrollTop = out.scrollHeight;
            }
          }
        }
        if (done) reader.cancel().catch(() => {});
        return `Streamed ${pieces} pieces${done ? "" : " (stream ended early)"}`;
      } catch (e) {
        if (e.name === "AbortError") return `Stopped after ${pieces} pieces`;
        throw e;
      } finally {
        state.textAbort = null;
        $("stop").disabled = true;
      }
    });
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    const key = $("api-key");
    key.value = sessionStorage.getItem(KEY_STORE) || "";
    key.addEventListener("change", () => {
      const v = key.value.trim();
      if (v) sessionStorage.setItem(KEY_STORE, v); else sessionStorage.removeItem(KEY_STORE);
      loadModels();
    });
    key.addEventListener("keydown", (ev) => { if (ev.key === "Enter") key.blur(); });
    $("model").addEventListener("change", () => selectModel());
    $("generate-form").addEventListener("submit", (ev) => { ev.preventDefault(); generate(); });
    $("grid").addEventListener("click", onGridClick);
    const cv = $("inpaint-canvas");
    cv.addEventListener("pointerdown", onPointerDown);
    cv.addEventListener("pointermove", onPointerMove);
    cv.addEventListener("pointerup", onPointerUp);
    cv.addEventListener("pointercancel", onPointerUp);
    $("clear-mask").addEventListener("click", () => {
      if (!state.mask) return;
      state.mask = offscreen(state.mask.width, state.mask.height, "#000");
      render();
    });
    $("inpaint-file").addEventListener("change", (ev) => loadFile(ev.target.files[0]));
    $("inpaint").addEventListener("click", inpaint);
    $("text-form").addEventListener("submit", (ev) => { ev.preventDefault(); streamText(); });
    $("stop").addEventListener("click", () => state.textAbort && state.textAbort.abort());
    loadModels();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
