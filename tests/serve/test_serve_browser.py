"""The page in headless Chromium (Debian chromium + chromium-driver, driven by Selenium) against a server on
loopback: pick a class / type a prompt, generate, watch the progress bar move and the image appear; upload an
image, paint a mask, inpaint, and check that every pixel outside the painted mask is kept."""
from __future__ import annotations

import base64
import io
import json
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from serve_helpers import call

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (make test installs it)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no chromium + chromedriver (Debian: apt-get install "
                                                         "chromium chromium-driver; make test does)"),
    pytest.mark.usefixtures("one_thread"),
]

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

# records every value the progress bar shows (the page sets it as an attribute on each event)
WATCH_PROGRESS = """
window.seen = [];
new MutationObserver(() => window.seen.push(Number(document.getElementById('progress').getAttribute('value'))))
  .observe(document.getElementById('progress'), {attributes: true, attributeFilter: ['value']});
"""


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(driver, url):
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


def _set(driver, element_id, value):
    el = driver.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(str(value))


def _generate(driver, n_results_before: int):
    driver.execute_script(WATCH_PROGRESS)
    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img.result"))
                                     > n_results_before and d.execute_script(
        "const i = document.querySelector('#gallery img.result'); return i.complete && i.naturalWidth > 0"))
    assert driver.find_element(By.ID, "error").text == ""
    return driver.find_element(By.CSS_SELECTOR, "#gallery img.result")


def _fetch(url: str) -> Image.Image:
    status, png, _ = call(url)
    assert status == 200
    return Image.open(io.BytesIO(png))


def test_class_then_prompt_generate_with_progress(serve, browser):
    srv = serve()
    _open(browser, srv.url + "/")
    Select(browser.find_element(By.ID, "model")).select_by_value("cls")
    assert browser.find_element(By.ID, "class").is_displayed()
    assert not browser.find_element(By.ID, "prompt").is_displayed()  # only the controls the model takes
    Select(browser.find_element(By.ID, "class")).select_by_visible_text("three")
    _set(browser, "steps", 40)
    _set(browser, "seed", 7)
    img = _generate(browser, 0)
    seen = browser.execute_script("return window.seen")
    assert seen[-1] == 1 and any(0 < v < 1 for v in seen), seen  # the bar moved through the steps
    assert seen == sorted(seen)
    result = _fetch(img.get_attribute("src"))
    meta = json.loads(result.text["ldmkit"])
    assert meta["class_label"] == 3 and meta["seed"] == 7 and meta["steps"] == 40 and result.size == (32, 32)
    assert browser.find_element(By.ID, "preview").is_displayed()  # a decoded preview came on the way

    Select(browser.find_element(By.ID, "model")).select_by_value("text")
    assert not browser.find_element(By.ID, "class").is_displayed()
    browser.find_element(By.ID, "prompt").send_keys("a red circle left of a blue square")
    _set(browser, "steps", 4)
    _set(browser, "size", 64)
    img = _generate(browser, 1)
    meta = json.loads(_fetch(img.get_attribute("src")).text["ldmkit"])
    assert meta["prompt"] == "a red circle left of a blue square" and meta["model"] == "text"
    # "reuse settings" on the first result brings back its model, class and seed
    browser.find_elements(By.XPATH, "//button[text()='reuse settings']")[-1].click()
    assert browser.find_element(By.ID, "model").get_attribute("value") == "cls"
    assert browser.find_element(By.ID, "seed").get_attribute("value") == "7"
    assert Select(browser.find_element(By.ID, "class")).first_selected_option.text == "three"


def test_paint_a_mask_and_inpaint_keeps_the_rest(serve, browser, tmp_path):
    srv = serve()
    yy, xx = np.mgrid[0:32, 0:32]
    original = np.stack([xx * 8, yy * 8, np.full_like(xx, 128)], -1).astype(np.uint8)
    Image.fromarray(original).save(tmp_path / "photo.png")
    _open(browser, srv.url + "/")
    Select(browser.find_element(By.ID, "model")).select_by_value("cls")
    browser.find_element(By.ID, "image-file").send_keys(str(tmp_path / "photo.png"))
    canvas = browser.find_element(By.ID, "mask-canvas")
    WebDriverWait(browser, 10).until(lambda d: canvas.is_displayed() and canvas.size["height"] > 100)
    _set(browser, "steps", 10)
    # a horizontal stroke through the middle of the image
    ActionChains(browser).move_to_element_with_offset(canvas, -60, 0).click_and_hold() \
        .move_by_offset(40, 0).move_by_offset(40, 0).move_by_offset(40, 0).release().perform()
    assert not browser.find_element(By.ID, "strength-row").is_displayed()  # a mask: inpainting, not img2img
    mask_url = browser.execute_script("return maskDataURL()")
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(mask_url.split(",", 1)[1]))).convert("L")) > 127
    assert 20 < mask.sum() < 600 and not mask[:8].any() and not mask[-8:].any()
    img = _generate(browser, 0)
    result = np.asarray(_fetch(img.get_attribute("src")).convert("RGB"))
    np.testing.assert_array_equal(result[~mask], original[~mask])  # outside the mask: the upload, exactly
    assert np.abs(result[mask].astype(int) - original[mask]).mean() > 5  # inside: regenerated
    meta = json.loads(_fetch(img.get_attribute("src")).text["ldmkit"])
    assert meta["uploads"] == ["image", "mask"]


def test_place_boxes_on_the_layout_canvas(serve, browser):
    srv = serve()
    _open(browser, srv.url + "/")
    Select(browser.find_element(By.ID, "model")).select_by_value("layout")
    assert not browser.find_element(By.ID, "prompt").is_displayed()
    canvas = browser.find_element(By.ID, "boxes-canvas")
    Select(browser.find_element(By.ID, "box-class")).select_by_visible_text("square")
    # canvas 256 px, origin at its centre: drag from (-96, -96) to (0, 32) -> box (0.125, 0.125, 0.5, 0.625)
    ActionChains(browser).move_to_element_with_offset(canvas, -96, -96).click_and_hold() \
        .move_by_offset(48, 64).move_by_offset(48, 64).release().perform()
    Select(browser.find_element(By.ID, "box-class")).select_by_visible_text("triangle")
    ActionChains(browser).move_to_element_with_offset(canvas, 40, 40).click_and_hold() \
        .move_by_offset(60, 60).release().perform()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#boxes-list li")) == 2
    _set(browser, "steps", 4)
    img = _generate(browser, 0)
    boxes = json.loads(_fetch(img.get_attribute("src")).text["ldmkit"])["boxes"]
    assert [b[0] for b in boxes] == [2.0, 3.0]  # square, triangle: 1-based class ids
    np.testing.assert_allclose(boxes[0][1:], [0.125, 0.125, 0.5, 0.625], atol=0.02)
    np.testing.assert_allclose(boxes[1][1:], [0.656, 0.656, 0.891, 0.891], atol=0.02)
