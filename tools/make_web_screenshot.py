"""Take docs/images/web.png: the page of `harmonize serve` in headless Chromium, before/after shown.

    PYTHONPATH=. python tools/make_web_screenshot.py [--name l100285] [--model gknet] [--out docs/images/web.png]

Needs the web extra, selenium, and Debian's chromium and chromium-driver. Uses a LabelMe test
photo from ../shared/data (its composite and mask), runs it through the page and saves a
screenshot with the compare slider in the middle.
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LABELME = REPO.parent / "shared" / "data" / "labelme-harmony"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="l100285", help="LabelMe photo (its _1 mask and _1_1 composite)")
    ap.add_argument("--model", default="gknet")
    ap.add_argument("--out", default=str(REPO / "docs" / "images" / "web.png"))
    ap.add_argument("--size", default="1400,900", help="window width,height")
    args = ap.parse_args()

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from harmonize.web import HarmonizeService, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = HarmonizeService([args.model, "reinhard"], device="cpu")
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)

    profile = tempfile.mkdtemp(prefix="harmonize-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", f"--window-size={args.size}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        while driver.execute_script("return document.body.dataset.ready") != "1":
            time.sleep(0.05)
        driver.find_element("id", "composite-file").send_keys(str(LABELME / "composite_images" / f"{args.name}_1_1.jpg"))
        driver.find_element("id", "mask-file").send_keys(str(LABELME / "masks" / f"{args.name}_1.png"))
        while driver.execute_script("return document.getElementById('run').disabled"):
            time.sleep(0.05)
        driver.find_element("id", "run").click()
        while driver.execute_script("return document.getElementById('after-img').dataset.ready") != "1":
            err = driver.execute_script("return document.getElementById('error').textContent")
            if err:
                raise SystemExit(f"the page shows an error: {err}")
            time.sleep(0.1)
        driver.execute_script("document.activeElement.blur();")
        time.sleep(0.3)
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
        server.should_exit = True
        shutil.rmtree(profile, ignore_errors=True)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    out = Path(args.out)
    img.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    print(f"wrote {out} ({img.width}x{img.height}, {out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
