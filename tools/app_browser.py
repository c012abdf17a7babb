"""Drive ``dynamask app`` in headless Chromium as a person would, offline: the browser test's
code path, and the one that makes the docs' screenshot.

    python tools/app_browser.py --screenshot docs/images/app.png   # the docs' picture (≤ 150 KB)

It starts the server on 127.0.0.1, opens the page with every other host unresolvable, picks a
shapes image, moves the budget slider from "no budget" to its lowest value, uploads a corrupt
file and then a good image, and returns what the page showed at each step (``walk``). It needs
Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and the [app] extra.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT_LIMIT = 150 * 1024
#: every host but this machine's loopback fails to resolve: the page must work without them
BLOCK_OTHER_HOSTS = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
GFLOPS = re.compile(r"mask GFLOPs on this image: ([0-9.]+)")
COUNT_14 = re.compile(r"14×14: (\d+)")


def browser_paths():
    """(chromium, chromedriver) from PATH, or None when either is missing."""
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(weights=None, port=None, timeout=120.0):
    """``python -m dynamask app`` in a child process; (process, url) once the page answers."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "dynamask", "app", "--host", "127.0.0.1", "--port", str(port)]
    if weights:
        cmd += ["--weights", os.fspath(weights)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"dynamask app exited with {proc.returncode}: {log.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    proc.log = log
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"dynamask app did not answer on {url} within {timeout:.0f} s")


def stop_server(proc) -> str:
    """Stop the child and return its output (for a failing test's message)."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log = getattr(proc, "log", None)
    if log is None:
        return ""
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]


def open_browser(width=1400, height=1150):
    """Headless Chromium through its Debian chromedriver (never a downloaded one)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = browser_paths()
    if found is None:
        raise RuntimeError("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        BLOCK_OTHER_HOSTS,
        f"--window-size={width},{height}",
        "--disable-background-networking",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(found[1]), options=options)


def _wait(driver, condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition(driver)
        except Exception:  # noqa: BLE001 - the page is re-rendering
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(
        f"the page did not show {what} within {timeout:.0f} s; message: {_text(driver, 'dm-message')!r}"
        f"; summary: {_text(driver, 'dm-summary')!r}"
    )


def _text(driver, elem_id) -> str:
    try:
        return driver.find_element("id", elem_id).text
    except Exception:  # noqa: BLE001
        return ""


def _overlay(driver):
    """The shown overlay's pixels, read from the page's own image URL."""
    import numpy as np
    from PIL import Image

    src = driver.find_element("css selector", "#dm-overlay img").get_attribute("src")
    with urllib.request.urlopen(src, timeout=10) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def _numbers(summary: str) -> dict:
    return {"gflops": float(GFLOPS.search(summary).group(1)), "count_14": int(COUNT_14.search(summary).group(1))}


def _upload(driver, elem_id, path):
    """Gradio puts an upload button's file input just before the button."""
    driver.find_element("xpath", f"//*[@id='{elem_id}']/preceding-sibling::input[@type='file'][1]").send_keys(
        os.fspath(path)
    )


def external_requests(driver) -> list:
    """Every URL the page asked for that is not on 127.0.0.1 (data: and blob: URLs are local)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if not url.startswith(("http://127.0.0.1", "data:", "blob:", "ws://127.0.0.1")):
                urls.append(url)
    return urls


def walk(driver, url, good_image, corrupt_file, screenshot=None, timeout=60.0) -> dict:
    """The person's steps; what the page showed after each."""
    from selenium.webdriver.common.keys import Keys

    seen = {}
    driver.get(url)
    labels = _wait(
        driver,
        lambda d: [e.text for e in d.find_elements("css selector", "#dm-sample label")],
        timeout,
        "the sample images",
    )
    _wait(driver, lambda d: "mask GFLOPs" in _text(d, "dm-summary"), timeout, "the first sample rendered")
    pick = labels[1]
    driver.find_element("xpath", f"//*[@id='dm-sample']//label[normalize-space()='{pick}']").click()
    summary = _wait(
        driver,
        lambda d: (t := _text(d, "dm-summary")) and f"image: {pick}" in t and "no budget" in t and t,
        timeout,
        f"{pick} at no budget",
    )
    seen["no_budget"] = {**_numbers(summary), "overlay": _overlay(driver), "summary": summary}

    budget = driver.find_element("css selector", "#dm-budget input[type=range]")
    driver.execute_script("arguments[0].focus()", budget)
    budget.send_keys(Keys.HOME)
    lowest = budget.get_attribute("min")
    summary = _wait(
        driver,
        lambda d: (t := _text(d, "dm-summary")) and f"budget {float(lowest):.3f}" in t and t,
        timeout,
        f"the run at budget {lowest}",
    )
    seen["lowest_budget"] = {**_numbers(summary), "overlay": _overlay(driver), "summary": summary, "budget": lowest}
    if screenshot:
        save_screenshot(driver, screenshot)

    _upload(driver, "dm-upload", corrupt_file)
    seen["corrupt_message"] = _wait(driver, lambda d: _text(d, "dm-message"), timeout, "an error message")
    _upload(driver, "dm-upload", good_image)
    name = os.path.basename(os.fspath(good_image))
    summary = _wait(
        driver, lambda d: (t := _text(d, "dm-summary")) and f"image: {name}" in t and t, timeout, f"the uploaded {name}"
    )
    seen["good_after_corrupt"] = {**_numbers(summary), "summary": summary, "message": _text(driver, "dm-message")}
    seen["external_requests"] = external_requests(driver)
    return seen


def save_screenshot(driver, path, limit=SCREENSHOT_LIMIT) -> int:
    """The page as a PNG of at most ``limit`` bytes: a 256-colour palette without dithering (flat UI
    colours stay exact), then fewer colours, then a smaller picture, as far as it needs."""
    from PIL import Image

    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    for scale, colours in ((1.0, 256), (1.0, 128), (0.8, 128), (0.6, 64), (0.4, 32)):
        shown = (
            image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
            if scale < 1
            else image
        )
        buffer = io.BytesIO()
        shown.quantize(colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
            buffer, format="PNG", optimize=True
        )
        if buffer.tell() <= limit:
            break
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(buffer.getvalue())
    return buffer.tell()


def walk_inputs(folder) -> tuple:
    """A good shapes image (not one of the page's samples) and a corrupt "image"."""
    sys.path.insert(0, str(ROOT / "src"))
    from dynamask.data import generate_shapes_dataset

    data = generate_shapes_dataset(Path(folder) / "shapes", 0, 1, image_size=256, seed=7, detail=True)
    good = Path(folder) / "my_upload.png"
    shutil.copy(next(Path(data["val_dir"]).glob("*.png")), good)
    corrupt = Path(folder) / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 64)
    return good, corrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshot", required=True, help="PNG to write (e.g. docs/images/app.png)")
    parser.add_argument("--weights", help="model for the server (default: the shipped head)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        good, corrupt = walk_inputs(folder)
        proc, url = start_server(args.weights)
        try:
            driver = open_browser()
            try:
                seen = walk(driver, url, good, corrupt, screenshot=args.screenshot)
            finally:
                driver.quit()
        finally:
            stop_server(proc)
    print(
        f"wrote {args.screenshot} ({os.path.getsize(args.screenshot)} bytes); GFLOPs "
        f"{seen['no_budget']['gflops']} -> {seen['lowest_budget']['gflops']}, 14×14 instances "
        f"{seen['no_budget']['count_14']} -> {seen['lowest_budget']['count_14']}; external requests: "
        f"{len(seen['external_requests'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
