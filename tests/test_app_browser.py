"""The web app in a real browser: ``pyramidflow app`` serves the page, headless Chromium drives it.

Needs Chromium (Debian: ``apt-get install chromium``), Playwright (pip; it drives that binary, no
browser download) and the app extra. Outside CI the test is skipped when one is missing; in CI
(``CI=true``, where ``.ci/run`` installs them) it fails instead.
``PYRAMIDFLOW_APP_SCREENSHOT=docs/app.png`` also writes the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pyramidflow.eval import describe_video
from pyramidflow.io import read_video

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("PYRAMIDFLOW_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true")
START_TIMEOUT = 300  # s: importing torch and Gradio on a busy 2-core machine
RED = "a red circle moving left on a black background"

# Draws each frame the <video> presents onto a canvas and counts red, dark and other bright pixels.
SAMPLE_FRAMES = """async ([selector, wanted]) => {
  const v = document.querySelector(selector);
  v.muted = true;
  if (v.paused) await v.play();
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext('2d', {willReadFrequently: true});
  const frames = [];
  await new Promise(resolve => {
    const deadline = performance.now() + 20000;
    const grab = (now, meta) => {
      ctx.drawImage(v, 0, 0);
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      let red = 0, dark = 0, other = 0;
      for (let i = 0; i < d.length; i += 4) {
        const r = d[i], g = d[i + 1], b = d[i + 2];
        if (r > 140 && g < 90 && b < 90) red++;
        else if (r < 50 && g < 50 && b < 50) dark++;
        else if (Math.max(r, g, b) > 140) other++;
      }
      frames.push({time: meta.mediaTime, red, dark, other, pixels: d.length / 4});
      if (frames.length < wanted && performance.now() < deadline) v.requestVideoFrameCallback(grab);
      else resolve();
    };
    v.requestVideoFrameCallback(grab);
  });
  return {frames, width: v.videoWidth, height: v.videoHeight, paused: v.paused, loop: v.loop};
}"""


def _missing() -> list[str]:
    missing = [] if Path(CHROMIUM).is_file() else ["chromium (apt-get install chromium)"]
    for module, how in (("playwright", 'pip install -e ".[browser]"'), ("gradio", 'pip install -e ".[app]"')):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{module} ({how})")
    return missing


def _tail(path: Path) -> str:
    return path.read_text()[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if missing := _missing():
        message = "the browser test needs " + ", ".join(missing)
        if IN_CI:
            pytest.fail(message + "; .ci/run installs them")
        pytest.skip(message)
    out = tmp_path_factory.mktemp("app")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    env.setdefault("OMP_NUM_THREADS", "1")
    log = open(out / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "pyramidflow", "app", "--host", "127.0.0.1", "--port",
                             str(port), "--out", str(out / "results")], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    url = f"http://127.0.0.1:{port}/"
    start = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited ({proc.returncode}):\n{_tail(out / 'server.log')}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - start > START_TIMEOUT:
                pytest.fail(f"the app did not answer in {START_TIMEOUT} s:\n{_tail(out / 'server.log')}")
            time.sleep(1)
        yield url, out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    driver = sync_playwright().start()
    chromium = driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=["--no-sandbox", "--disable-dev-shm-usage",
                                            "--autoplay-policy=no-user-gesture-required"])
    yield chromium
    chromium.close()
    driver.stop()


@pytest.fixture
def page(server, browser):
    """A fresh page (a new session of the app) on the loaded app."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(90_000)
    page.goto(server[0])
    page.locator("#generate").wait_for()
    yield page
    page.close()


def _generate(page, prompt: str, count: int) -> None:
    """Type ``prompt``, press generate, wait for the session's ``count``-th result in the gallery."""
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#generate").click()
    page.locator("#gallery .caption-label").nth(count - 1).wait_for()


def _error(page, text: str) -> None:
    page.locator(".toast-body.error").filter(has_text=text).first.wait_for()


def _upload(page, path: Path) -> None:
    """Put ``path`` in the image-to-video upload, replacing what is there."""
    clear = page.locator("#upload").get_by_label("Clear")
    if clear.count():
        clear.first.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))


def _download(page, selector: str, tmp_path: Path) -> Path:
    link = page.locator(f"{selector} a[download]").first
    href = link.get_attribute("href")
    path = tmp_path / Path(href).name
    with urllib.request.urlopen(href, timeout=60) as response:
        path.write_bytes(response.read())
    return path


def test_text_to_video_plays_frames_of_the_prompted_colour(page, tmp_path):
    _generate(page, "a blue square moving up on a white background", 1)
    _generate(page, RED, 2)
    captions = page.locator("#gallery .caption-label").all_inner_texts()
    assert captions[0].startswith(RED) and captions[1].startswith("a blue square"), captions
    assert "steps 10-10-10" in captions[0] and "seed 0" in captions[0]
    video = page.locator("#result-video video")
    page.wait_for_function("s => document.querySelector(s).src.includes('a-red-circle')",
                           arg="#result-video video")
    seen = page.evaluate(SAMPLE_FRAMES, ["#result-video video", 12])
    frames = seen["frames"]
    assert (seen["width"], seen["height"]) == (32, 32) and seen["loop"] and not seen["paused"]
    assert len({f["time"] for f in frames}) >= 3, frames  # it plays: several distinct frames shown
    for f in frames:  # a red object on black in every frame, nothing else bright
        assert f["red"] >= 15 and f["dark"] >= 0.6 * f["pixels"] and f["other"] <= 0.05 * f["pixels"], f
    clip = _download(page, "#result-video", tmp_path)  # the page's download link: the mp4 it plays
    assert clip.suffix == ".mp4" and video.get_attribute("src").endswith(clip.name)
    pixels, fps = read_video(clip)
    assert pixels.shape == (32, 3, 32, 32) and fps == 8  # the default model's 32 frames
    described = describe_video(pixels)
    assert described["color"] == "red" and described["background"] == "black", described
    assert f"prompt {RED}" in page.locator("#settings").inner_text()
    if target := os.environ.get("PYRAMIDFLOW_APP_SCREENSHOT"):
        page.mouse.move(0, 0)
        page.screenshot(path=target, full_page=True)


def test_errors_are_messages_and_the_app_keeps_working(page, tmp_path):
    from PIL import Image

    page.locator("#prompt textarea").fill("")
    page.locator("#generate").click()
    _error(page, "write a prompt first")
    page.locator("#frames input").fill("999")
    page.locator("#prompt textarea").fill(RED)
    page.locator("#generate").click()
    _error(page, "cannot make 999 frames: valid values are 1, 2, 3")
    assert page.locator("#gallery .caption-label").count() == 0
    assert "Traceback" not in page.content()

    page.locator("#frames input").fill("3")
    _generate(page, "a green triangle moving right on a black background", 1)

    page.get_by_role("tab", name="Image to video").click()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    _upload(page, tmp_path / "broken.png")
    _error(page, "cannot read broken.png as an image")
    first = Image.new("RGB", (48, 32), (0, 0, 0))
    first.paste((0, 0, 255), (18, 10, 30, 22))  # a blue square in the middle of black
    first.save(tmp_path / "first.png")
    _upload(page, tmp_path / "first.png")
    page.locator("#preview img").wait_for()
    _generate(page, "a blue square moving right on a black background", 2)
    pixels, _ = read_video(_download(page, "#result-video", tmp_path))
    assert pixels.shape == (3, 3, 32, 32)
    assert pixels[0, 2, 16, 16] > 0.8 and pixels[0, 0, 16, 16] < 0.2  # the uploaded frame comes first

    page.get_by_role("tab", name="Text to image").click()
    _generate(page, "a yellow circle on a gray background", 3)
    page.locator("#result-image img").wait_for()
    assert not page.locator("#result-video").is_visible()
    assert page.locator("#gallery .caption-label").first.inner_text().startswith("a yellow circle")
    assert "Traceback" not in page.content()
