"""Screenshots of the ``ldmkit serve`` page for docs/serve.md, taken in headless Chromium with a real model.

    PYTHONPATH=src python benchmarks/serve_screenshots.py runs/ldm/shapes-text-eps/pipeline.safetensors --out docs

1. ``serve-text.png``: a prompt, 4 images, the gallery;
2. ``serve-inpaint.png``: an uploaded shapes image with a painted mask, and its inpainted result.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path, help="a text-to-image pipeline (e.g. the shapes text model)")
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--prompt", default="a red circle left of a blue square")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from ldmkit.data.shapes import render, sample_objects
    from ldmkit.serve import ServeLimits
    from ldmkit.serve.app import create_app
    from ldmkit.serve.server import BackgroundServer, load_entries

    work = args.out / ".serve-shots"
    work.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("google-chrome")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")),
                              options=options)
    entries = load_entries([str(args.checkpoint)])
    try:
        with BackgroundServer(create_app(entries, work / "results", ServeLimits(previews=4))) as srv:
            driver.get(srv.url + "/")
            WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.ready"))

            def set_value(element_id, value):
                el = driver.find_element(By.ID, element_id)
                el.clear()
                el.send_keys(str(value))

            def generate(n_before):
                driver.find_element(By.ID, "generate").click()
                WebDriverWait(driver, 600).until(
                    lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img.result")) > n_before
                    and d.execute_script("return [...document.querySelectorAll('#gallery img.result')]"
                                         ".every(i => i.complete && i.naturalWidth > 0)"))
                time.sleep(0.5)

            driver.find_element(By.ID, "prompt").send_keys(args.prompt)
            set_value("steps", args.steps)
            set_value("seed", 3)
            set_value("n", 4)
            generate(0)
            driver.save_screenshot(str(args.out / "serve-text.png"))

            rng = np.random.default_rng(5)
            image, _ = render(sample_objects(rng, 32, 2), 32, (235, 235, 235))  # a shapes-like image
            Image.fromarray(image).save(work / "upload.png")
            driver.find_element(By.ID, "image-file").send_keys(str((work / "upload.png").resolve()))
            canvas = driver.find_element(By.ID, "mask-canvas")
            WebDriverWait(driver, 10).until(lambda d: canvas.size["height"] > 100)
            set_value("brush", 20)
            ActionChains(driver).move_to_element_with_offset(canvas, 30, -30).click_and_hold() \
                .move_by_offset(30, 30).move_by_offset(20, 40).release().perform()
            set_value("n", 2)
            generate(4)
            driver.save_screenshot(str(args.out / "serve-inpaint.png"))
    finally:
        driver.quit()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.out / 'serve-text.png'}, {args.out / 'serve-inpaint.png'}")


if __name__ == "__main__":
    main()
