"""The web studio in a real browser: Playwright drives Debian's chromium against `genlab serve`'s
app (uvicorn on a loopback port, over tiny trained runs). The page gets the API key, generates a
grid, a mask is drawn with the mouse and inpainted, text streams in; a screenshot after each step
must be a non-blank PNG of the viewport's size, one of them at a phone's width.

The browser comes from the system: if chromium is missing and we are root with apt-get, the
fixture installs it (`apt-get install chromium`); it skips, saying why, only when it cannot."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import genlab
from tests.conftest import shakespeare_corpus
from tests.test_diffusion import TINY_DIFFUSION, small_mnist
from tests.test_text import TINY_TEXT

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (the test extra)")

pytestmark = pytest.mark.usefixtures("one_thread")

API_KEY = "studio-test-key"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _find_chromium() -> str | None:
    for p in (shutil.which("chromium"), "/usr/bin/chromium"):
        if p and os.access(p, os.X_OK):
            return p
    return None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium; installed with apt-get when missing and possible."""
    path = _find_chromium()
    if path:
        return path
    apt = shutil.which("apt-get")
    if not apt or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("no chromium on this machine and no way to install it (needs root and apt-get): "
                    "install Debian's chromium to run the browser test")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    for cmd in ([apt, "install", "-y", "-q", "chromium"], [apt, "update", "-q"],
                [apt, "install", "-y", "-q", "chromium"]):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
            log.append(f"$ {' '.join(cmd)} -> {p.returncode}\n{p.stdout[-1500:]}{p.stderr[-1500:]}")
        except (subprocess.TimeoutExpired, OSError) as e:
            log.append(f"$ {' '.join(cmd)} -> {e}")
        path = _find_chromium()
        if path:
            return path
    pytest.skip("chromium is missing and `apt-get install chromium` did not install it:\n" + "\n".join(log)[-3000:])


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_root):
    """The real app over a tiny class-conditional diffusion run (16x16 digits, can inpaint) and a
    tiny char GPT, on a free loopback port; yields the base URL."""
    import uvicorn

    from genlab.serve import create_app

    base = tmp_path_factory.mktemp("studio")
    digits = genlab.train("ddpm-cond-mnist", base / "digits", steps=2, data_root=str(data_root),
                          overrides=TINY_DIFFUSION + small_mnist(base, data_root, n=200)).run_dir
    corpus = shakespeare_corpus(base)
    poet = genlab.train("gpt-shakespeare-cpu", base / "poet", overrides=TINY_TEXT + [f"data.path={corpus}"],
                        steps=2).run_dir
    app = create_app([digits, poet], api_key=API_KEY)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the uvicorn server did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def page(chromium_path, server):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=DESKTOP, device_scale_factor=1)
            pg = context.new_page()
            pg.set_default_timeout(15_000)
            pg.page_errors = []
            pg.on("pageerror", lambda e: pg.page_errors.append(str(e)))
            yield pg
        finally:
            browser.close()


def shot(page, path: Path, viewport: dict) -> None:
    """A viewport screenshot that must be a PNG of the viewport's size with visible content."""
    from PIL import Image

    page.screenshot(path=str(path))
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (viewport["width"], viewport["height"]), f"{path.name}: {im.size}"
        a = np.asarray(im.convert("L"), dtype=np.float64)
    assert a.std() > 12, f"{path.name} looks blank (pixel std {a.std():.1f})"


def status(page) -> str:
    return page.locator("#status").inner_text()


def test_studio_page(page, server, tmp_path):
    t0 = time.monotonic()
    page.goto(server + "/")
    assert page.title() == "genlab studio"

    # 1. without the key the API answers 401 and the status line says so
    page.wait_for_function("document.querySelector('#status').dataset.kind === 'error'")
    assert "401" in status(page) and "API key" in status(page)

    # 2. the key box: sent as a Bearer header, kept in sessionStorage; the models appear
    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#model option[value=digits]", state="attached")
    assert page.evaluate("sessionStorage.getItem('genlab.apiKey')") == API_KEY
    page.select_option("#model", "digits")
    page.wait_for_selector("#image-panel", state="visible")
    page.wait_for_selector("#inpaint-panel", state="visible")
    assert page.locator("#text-panel").is_hidden()
    # the run's report as a table and its loss curves
    page.wait_for_function("document.querySelectorAll('#report tbody tr').length > 0")
    page.wait_for_function("document.querySelector('#loss').naturalWidth > 0")
    assert page.locator("#label option").count() == 11  # balanced + 10 digits

    # 3. a grid: 4 images of digit 7, 2 sampling steps, guidance 2
    page.fill("#n", "4")
    page.fill("#seed", "3")
    page.select_option("#label", "7")
    page.fill("#sampling-steps", "2")
    page.fill("#guidance", "2")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#grid').naturalWidth > 0")
    page.wait_for_function("document.querySelector('#status').dataset.kind !== 'busy'")
    assert "Generated 4 images" in status(page), status(page)
    assert page.evaluate("document.querySelector('#grid').naturalWidth") == 2 * (16 + 2) + 2  # make_grid layout
    shot(page, tmp_path / "1-grid.png", DESKTOP)

    # 4. pick the grid's second image, draw a mask with the mouse, inpaint
    grid = page.locator("#grid").bounding_box()
    page.mouse.click(grid["x"] + grid["width"] * 0.75, grid["y"] + grid["height"] * 0.25)
    assert page.locator("#inpaint-canvas").get_attribute("data-source") == "grid image 1"
    canvas = page.locator("#inpaint-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.3 + 0.04 * k), box["y"] + box["height"] * (0.4 + 0.02 * k))
    page.mouse.up()
    painted = int(canvas.get_attribute("data-mask-pixels"))
    assert 0 < painted < 16 * 16, painted
    page.click("#inpaint")
    page.wait_for_function("document.querySelector('#inpaint-result').naturalWidth > 0")
    page.wait_for_function("document.querySelector('#status').dataset.kind !== 'busy'")
    assert page.evaluate("document.querySelector('#inpaint-result').naturalWidth") == 16
    assert "Inpainted" in status(page), status(page)
    # the mask reached the server where it was drawn: every unpainted pixel (grey on the canvas; the
    # pink overlay never is) comes back unchanged
    known, kept = page.evaluate("""() => {
        const cv = document.querySelector('#inpaint-canvas'), s = cv.width / 16;
        const a = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
        const c = document.createElement('canvas'); c.width = c.height = 16;
        const ctx = c.getContext('2d'); ctx.drawImage(document.querySelector('#inpaint-result'), 0, 0);
        const b = ctx.getImageData(0, 0, 16, 16).data;
        let known = 0, kept = 0;
        for (let y = 0; y < 16; y++) for (let x = 0; x < 16; x++) {
            const i = (Math.floor((y + 0.5) * s) * cv.width + Math.floor((x + 0.5) * s)) * 4;
            if (a[i] !== a[i + 1] || a[i + 1] !== a[i + 2]) continue;  // painted
            known++;
            if (b[(y * 16 + x) * 4] === a[i]) kept++;
        }
        return [known, kept];
    }""")
    assert known == 16 * 16 - painted and kept == known, (known, kept, painted)
    shot(page, tmp_path / "2-inpaint.png", DESKTOP)

    # 5. an API error ({"detail": ...}) reaches the status line: n above the schema's bound
    page.fill("#n", "300")
    page.evaluate("document.querySelector('#n').removeAttribute('max')")  # past the browser's own check
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').dataset.kind === 'error'")
    assert "422" in status(page) and re.search(r"\bn\b", status(page)), status(page)
    page.fill("#n", "4")

    # 6. text: pick the GPT, stream a continuation and watch the output grow piece by piece
    page.select_option("#model", "poet")
    page.wait_for_selector("#text-panel", state="visible")
    assert page.locator("#image-panel").is_hidden() and page.locator("#inpaint-panel").is_hidden()
    page.fill("#prompt", "ROMEO:")
    page.fill("#max-tokens", "150")
    page.fill("#temperature", "0.9")
    page.fill("#top-k", "20")
    page.evaluate("""() => {
        const out = document.querySelector('#text-output');
        window.__lengths = [];
        new MutationObserver(() => window.__lengths.push(out.textContent.length))
            .observe(out, {childList: true, characterData: true, subtree: true});
    }""")
    page.click("#stream")
    page.wait_for_function("document.querySelector('#text-output').textContent.length > 'ROMEO:'.length")
    page.wait_for_function("document.querySelector('#status').dataset.kind !== 'busy'")
    assert "Streamed" in status(page), status(page)
    text = page.locator("#text-output").text_content()
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:") + 20
    lengths = page.evaluate("window.__lengths")
    assert len(set(lengths)) >= 5, f"the text did not stream in pieces: lengths {lengths[:20]}"
    shot(page, tmp_path / "3-text.png", DESKTOP)

    # 7. a phone-sized screen: no sideways scrolling; then the image panel at that width
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, tmp_path / "4-phone-text.png", PHONE)
    page.select_option("#model", "digits")
    page.wait_for_selector("#image-panel", state="visible")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#grid').naturalWidth > 0")
    page.wait_for_function("document.querySelector('#status').dataset.kind !== 'busy'")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, tmp_path / "5-phone-grid.png", PHONE)

    assert page.page_errors == []
    assert time.monotonic() - t0 < 40
