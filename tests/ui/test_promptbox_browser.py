"""PromptBox in a real browser: JupyterLab with ipywidgets 8 in headless Chromium, driven with Selenium.

Skips cleanly where chromium, chromedriver, selenium or JupyterLab is missing (`.ci/run` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "comfykit-test"

CELL = """
import comfykit as ck
from comfykit import demo

models = {models!r}
ckpt = demo.ensure_demo_checkpoint(models)
engine = ck.Engine(models, output_dir={out!r}, device="cpu", previews="latent2rgb")
wf = ck.Workflow()
model, clip, vae = wf.CheckpointLoaderSimple(ckpt_name=ckpt)
pos = wf.CLIPTextEncode(text="a lighthouse", clip=clip)
neg = wf.CLIPTextEncode(text="blurry", clip=clip)
out = wf.KSampler(model=model, positive=pos, negative=neg, latent_image=wf.EmptyLatentImage(width=64, height=64),
                  seed=1, steps=4, cfg=7.0, sampler_name="euler", scheduler="normal")
wf.PreviewImage(images=wf.VAEDecode(samples=out, vae=vae))
box = ck.ui.PromptBox(wf, engine, fields=[pos.text, out.steps], save_dir={out!r})
box
"""

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _tools():
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("chromium and chromedriver are not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install jupyterlab)")
    ipywidgets = pytest.importorskip("ipywidgets")
    if int(ipywidgets.__version__.split(".")[0]) < 8:
        pytest.skip("the browser test drives ipywidgets 8")
    return binary, driver, webdriver


def _jupyter_path() -> str:
    """Data folders of every environment on sys.path, so the widgets' lab extension is found wherever it is."""
    found = []
    for entry in sys.path:
        path = Path(entry)
        if path.name == "site-packages":
            share = path.parents[2] / "share" / "jupyter"
            if share.is_dir() and str(share) not in found:
                found.append(str(share))
    return os.pathsep.join(filter(None, [os.environ.get("JUPYTER_PATH", ""), *found]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def lab(tmp_path, request):
    """A JupyterLab server on a free port whose folder holds one notebook with a PromptBox (and the browser)."""
    tools = _tools()  # skip before making anything
    models_dir = request.getfixturevalue("models_dir")
    notebook = {"cells": [{"cell_type": "code", "execution_count": None, "id": "box", "metadata": {},
                           "outputs": [], "source": CELL.format(models=str(models_dir),
                                                                 out=str(tmp_path / "out")).strip()}],
                "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
                "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "box.ipynb").write_text(json.dumps(notebook))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "JUPYTER_PATH": _jupyter_path(), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    log = open(tmp_path / "lab.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", "--allow-root", f"--ServerApp.root_dir={tmp_path}", "--ServerApp.port_retries=0",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{base}/api/status", params={"token": TOKEN}, timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:])
            time.sleep(0.5)
        yield base, tools
    finally:
        os.killpg(server.pid, 15) if server.poll() is None else None
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(30)
        log.close()


def test_promptbox_renders_generates_and_fills_the_gallery_in_jupyterlab(lab, tmp_path):
    lab, (binary, driver, webdriver) = lab
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    from selenium.common.exceptions import StaleElementReferenceException

    # JupyterLab re-renders cells and outputs: an element found a moment ago can go stale; the waits look again
    wait = WebDriverWait(browser, float(os.environ.get("CK_BROWSER_WAIT", 180)),
                         ignored_exceptions=(StaleElementReferenceException,))
    try:
        browser.get(f"{lab}/lab/tree/box.ipynb?token={TOKEN}")
        editor = wait.until(lambda b: next((e for e in b.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .cm-content")
                                            if e.is_displayed()), None))
        # A cell run before the kernel connects is dropped: wait for the status bar to say the kernel is idle.
        wait.until(lambda b: "Idle" in b.find_element(By.CSS_SELECTOR, ".jp-StatusBar-Widget, #jp-main-statusbar")
                   .text)
        editor.click()  # edit mode in the only cell; Shift+Enter runs it
        ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()

        # The PromptBox renders: its fields, the Generate button and the blank 1x1 preview.
        wait.until(lambda b: next((e for e in b.find_elements(By.CSS_SELECTOR, ".jp-OutputArea button")
                                   if e.text.strip() == "Generate"), None))
        def output_area():  # found again each time: the output area is re-rendered as the widgets update
            return browser.find_element(By.CSS_SELECTOR, ".jp-OutputArea")

        assert output_area().find_elements(By.CSS_SELECTOR, "textarea")  # the prompt field

        def preview_width(b):
            images = output_area().find_elements(By.CSS_SELECTOR, "img")
            return b.execute_script("return arguments[0].naturalWidth", images[0]) if images else 0

        wait.until(lambda b: preview_width(b) == 1)
        def click_generate(b):  # found again here: the button may have been re-rendered since it was first seen
            button = next((e for e in b.find_elements(By.CSS_SELECTOR, ".jp-OutputArea button")
                           if e.text.strip() == "Generate"), None)
            if button is not None:
                button.click()
            return button is not None

        wait.until(click_generate)

        # A preview arrives, the step bar fills, and the gallery gets the picture with its Save button.
        wait.until(lambda b: preview_width(b) > 1)
        wait.until(lambda b: any(e.text.strip() == "Save"
                                 for e in output_area().find_elements(By.CSS_SELECTOR, "button")))
        output = output_area()
        bars = output.find_elements(By.CSS_SELECTOR, ".progress-bar")
        assert len(bars) == 2 and all("100%" in (bar.get_attribute("style") or "") for bar in bars)
        thumbs = output.find_elements(By.CSS_SELECTOR, "img")
        assert len(thumbs) >= 2
        assert browser.execute_script("return arguments[0].naturalWidth", thumbs[-1]) > 1
        assert "error" not in (output.text or "").lower()
    except Exception:
        browser.save_screenshot(str(tmp_path / "page.png"))  # kept with the lab log for a failed run
        print("page text:", browser.find_element(By.TAG_NAME, "body").text[-3000:])
        print("lab log:", (tmp_path / "lab.log").read_text()[-3000:])
        raise
    finally:
        browser.quit()
