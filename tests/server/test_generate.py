"""POST /generate (text in, PNG out) and the page at / driven in a real headless browser."""

from __future__ import annotations

import io
import json
import shutil
import uuid

import pytest
import requests
from conftest import wait_history
from PIL import Image

SMALL = {"steps": 2, "width": 32, "height": 32}


def test_generate_returns_the_png(server, demo_ckpt):
    answer = requests.post(server.url + "/generate", json={"prompt": "a cat on a mat", "negative": "dogs",
                                                           "seed": 1, "ckpt_name": demo_ckpt, **SMALL}, timeout=300)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(answer.content))
    assert image.size == (32, 32)
    view = requests.get(server.url + answer.headers["X-Comfykit-View"], timeout=30)
    assert view.content == answer.content
    prompt = wait_history(server, answer.headers["X-Prompt-Id"])["prompt"][2]
    texts = sorted(n["inputs"]["text"] for n in prompt.values() if n["class_type"] == "CLIPTextEncode")
    assert texts == ["a cat on a mat", "dogs"]
    sampler = next(n["inputs"] for n in prompt.values() if n["class_type"] == "KSampler")
    assert (sampler["seed"], sampler["steps"]) == (1, 2)


def test_generate_defaults_to_the_first_checkpoint(server):
    """The first checkpoint of the test folder is the broken one: the run fails and says where."""
    answer = requests.post(server.url + "/generate", json={"prompt": "x", **SMALL}, timeout=300)
    assert answer.status_code == 500
    body = answer.json()
    assert "CheckpointLoaderSimple" in body["error"] and body["prompt_id"]
    prompt = wait_history(server, body["prompt_id"])["prompt"][2]
    loader = next(n["inputs"] for n in prompt.values() if n["class_type"] == "CheckpointLoaderSimple")
    assert loader["ckpt_name"] == "broken.safetensors"


@pytest.mark.parametrize("body,needle", [
    ({"prompt": ""}, "prompt"),
    ({"negative": "only"}, "prompt"),
    ({"prompt": "x", "workflow": "sd15_txt2imgg"}, "sd15_txt2img"),
    ({"prompt": "x", "stepz": 3}, "stepz"),
    ({"prompt": "x", "steps": 0, "ckpt_name": "tiny-sd15.safetensors"}, "steps"),
    ({"prompt": "x", "ckpt_name": "missing.safetensors"}, "missing.safetensors"),
])
def test_generate_bad_input_is_a_400_that_says_what_is_wrong(server, body, needle):
    answer = requests.post(server.url + "/generate", json=body, timeout=60)
    assert answer.status_code == 400, answer.text
    assert needle in answer.json()["error"]


def test_favicon_and_page_assets_are_served(server):
    icon = requests.get(server.url + "/favicon.ico", timeout=30)
    assert icon.status_code == 200 and Image.open(io.BytesIO(icon.content)).size[0] >= 16
    page = requests.get(server.url + "/", timeout=30)
    assert "<script>" not in page.text and "script-src 'self'" in page.headers["Content-Security-Policy"]
    for asset, kind in (("/page.js", "javascript"), ("/page.css", "text/css")):
        answer = requests.get(server.url + asset, timeout=30)
        assert answer.status_code == 200 and kind in answer.headers["Content-Type"]


def test_generate_refuses_non_json(server):
    answer = requests.post(server.url + "/generate", data=b"prompt=cat", timeout=30)
    assert answer.status_code == 400 and "JSON" in answer.json()["error"]


def _chrome():
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("chromium and chromedriver are not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver, Service(driver), options


@pytest.mark.browser
def test_page_generates_into_the_gallery(server, demo_ckpt, tmp_path):
    webdriver, service, options = _chrome()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options.add_argument(f"--user-data-dir={tmp_path / 'chrome'}")
    browser = webdriver.Chrome(service=service, options=options)
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: b.find_element(By.ID, "status").text == "ready")
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#ckpt option")) >= 2)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#sampler option")) >= 2)
        # before the first run: no broken image, the placeholder instead; sampler fields with ComfyUI's defaults
        assert not browser.find_element(By.ID, "preview").is_displayed()
        assert browser.find_element(By.ID, "placeholder").is_displayed()
        assert Select(browser.find_element(By.ID, "sampler")).first_selected_option.text == "euler"
        assert Select(browser.find_element(By.ID, "scheduler")).first_selected_option.text == "normal"
        Select(browser.find_element(By.ID, "sampler")).select_by_value("euler_ancestral")
        Select(browser.find_element(By.ID, "ckpt")).select_by_value(demo_ckpt)
        prompt = f"a lighthouse {uuid.uuid4().hex[:6]}"
        for field, value in (("prompt", prompt), ("steps", "3"), ("width", "32"), ("height", "32"),
                             ("cfg", "6.5")):
            element = browser.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)
        browser.find_element(By.ID, "generate").click()
        image = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#gallery img.result")))
        wait.until(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
        assert image.get_attribute("title") == prompt
        assert "/view?" in image.get_attribute("src")
        assert browser.execute_script("return arguments[0].naturalWidth", image) == 32
        # the live preview arrived over the WebSocket as binary frames, and the bar reached the end
        assert browser.find_element(By.ID, "preview").get_attribute("src").startswith("blob:")
        assert browser.find_element(By.ID, "progress").get_attribute("value") == "3"
        assert browser.find_element(By.ID, "error").text == ""
        assert browser.find_element(By.ID, "preview").is_displayed()
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]  # no CSP refusals, no 404s
        png = Image.open(io.BytesIO(requests.get(image.get_attribute("src"), timeout=30).content))
        sampler = next(n for n in json.loads(png.text["prompt"]).values() if n["class_type"] == "KSampler")
        assert sampler["inputs"]["cfg"] == 6.5 and sampler["inputs"]["sampler_name"] == "euler_ancestral"
    finally:
        browser.quit()
