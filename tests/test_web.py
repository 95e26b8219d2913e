"""``harmonize serve``: the HTTP endpoints, the command, and the page in a real headless Chromium.

The endpoint tests need the web extra (starlette, uvicorn, python-multipart) and httpx;
the browser tests also need selenium and Debian's ``chromium`` and ``chromium-driver``
(``.ci/run`` installs all of them). Each part skips with its reason when they are missing.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harmonize.cli import main

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
LABELME, SAMPLE = DATA / "labelme-harmony", DATA / "iharmony4-sample"

pytest.importorskip("starlette", reason='the web extra is not installed (pip install "harmonize[web]")')
pytest.importorskip("uvicorn", reason='the web extra is not installed (pip install "harmonize[web]")')
pytest.importorskip("python_multipart", reason='the web extra is not installed (pip install "harmonize[web]")')

from harmonize.web import HarmonizeService, create_app  # noqa: E402

NAME = "l100285"  # a LabelMe test photo whose composite is far off (fMSE ~5900)
HADOBE = SAMPLE / "HAdobe5k"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (CI places ../shared beside the repository)")
    return path


def _labelme() -> tuple[Path, Path, Path]:
    root = require(LABELME)
    return root / "composite_images" / f"{NAME}_1_1.jpg", root / "masks" / f"{NAME}_1.png", root / "real_images" / f"{NAME}.jpg"


def _rgb(path_or_bytes) -> np.ndarray:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(src) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _grey(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.float32).mean(axis=2)


def _fmse(a: np.ndarray, b: np.ndarray, fg: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b) ** 2)[fg].mean())


def _synthetic(tmp: Path, h: int = 240, w: int = 320) -> tuple[Path, np.ndarray]:
    """A smooth background with an off-colour band (rows 100..140): an object to paint."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([70 + 100 * xx / w, 90 + 80 * yy / h, 160 - 50 * xx / w], axis=2)
    img[100:140] = img[100:140] * [1.5, 0.6, 0.5]
    img = img.clip(0, 255).astype(np.uint8)
    path = tmp / "synthetic.png"
    Image.fromarray(img).save(path)
    return path, img


@pytest.fixture(scope="module")
def service() -> HarmonizeService:
    return HarmonizeService(["gknet", "reinhard"], device="cpu")  # gknet, the default, loads now


@pytest.fixture(scope="module")
def client(service):
    from starlette.testclient import TestClient

    pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")
    with TestClient(create_app(service)) as c:
        yield c


def _post_pair(client, composite: bytes, mask: bytes, model: str = "reinhard", names=("comp.jpg", "mask.png")):
    files = {"composite": (names[0], composite), "mask": (names[1], mask)}
    return client.post("/api/harmonize", files=files, data={"model": model})


# --------------------------------------------------------------------------- HTTP


def test_info_lists_the_models(client) -> None:
    info = client.get("/api/info").json()
    assert info["models"] == ["gknet", "reinhard"] and info["default"] == "gknet"
    assert "center" in info["anchors"] and info["max_pixels"] > 12e6
    page = client.get("/")
    assert page.status_code == 200 and "<title>harmonize</title>" in page.text


def test_harmonize_endpoint_returns_the_full_image(client) -> None:
    comp, mask, real = _labelme()
    r = _post_pair(client, comp.read_bytes(), mask.read_bytes(), model="gknet")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.headers["x-harmonize-size"] == "256x256"
    out, c, fg = _rgb(r.content), _rgb(comp), _grey(mask) > 127
    assert out.shape == c.shape
    assert (out[_grey(mask) == 0] == c[_grey(mask) == 0]).all(), "background unchanged"
    assert _fmse(out, _rgb(real), fg) < _fmse(c, _rgb(real), fg), "foreground closer to the real photo"


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("wrong size", 400, ["must be the size", "mask.png", "comp.jpg"]),
        ("broken composite", 400, ["comp.jpg", "cannot read"]),
        ("empty file", 400, ["comp.jpg", "empty"]),
        ("empty mask", 400, ["mask.png", "empty"]),
        ("unknown model", 400, ["nope", "gknet, reinhard"]),
    ],
)
def test_bad_input_is_a_json_error(client, case: str, status: int, words: list[str]) -> None:
    comp, mask, _ = _labelme()
    c, m, model = comp.read_bytes(), mask.read_bytes(), "reinhard"
    buf = io.BytesIO()
    if case == "wrong size":
        Image.new("L", (100, 80), 255).save(buf, format="PNG")
        m = buf.getvalue()
    elif case == "broken composite":
        c = c[: len(c) // 3]
    elif case == "empty file":
        c = b""
    elif case == "empty mask":
        Image.new("L", (256, 256), 0).save(buf, format="PNG")
        m = buf.getvalue()
    else:
        model = "nope"
    r = _post_pair(client, c, m, model=model)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert "\n" not in err and "Traceback" not in err
    assert all(w in err for w in words), err


def test_samples_endpoint_serves_the_bundled_files_only(client) -> None:
    from harmonize.demo import bundled_samples

    bundled = bundled_samples()
    listing = client.get("/api/samples").json()["samples"]
    assert [s["name"] for s in listing] == [b.name for b in bundled] and len(listing) == 4
    for entry, sample in zip(listing, bundled):
        for kind, media in (("composite", "image/jpeg"), ("mask", "image/png")):
            r = client.get(f"/api/samples/{entry[kind]}")
            assert r.status_code == 200 and r.headers["content-type"] == media
            assert r.content == getattr(sample, kind).read_bytes()
    for name in ("README.md", "l100044.jpg", "..%2Fmasks%2Fl100044_1.png", "..%2F..%2F__init__.py"):
        r = client.get(f"/api/samples/{name}")
        assert r.status_code == 404 and r.headers["content-type"] == "application/json", name


def test_malformed_requests_and_unknown_paths(client) -> None:
    r = client.post("/api/harmonize", content=b"garbage", headers={"content-type": "text/plain"})
    assert r.status_code == 400 and "multipart" in r.json()["error"]
    r = client.post("/api/harmonize", files={"composite": ("a.jpg", b"x")})
    assert r.status_code == 400 and "no mask" in r.json()["error"]
    r = client.get("/api/nothing")
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]


def test_limits(service) -> None:
    from starlette.testclient import TestClient

    comp, mask, _ = _labelme()
    with TestClient(create_app(service, max_upload_mb=0.01)) as c:  # 10 kB
        r = _post_pair(c, comp.read_bytes(), mask.read_bytes())
        assert r.status_code == 413 and "limit" in r.json()["error"]
    small = HarmonizeService(["reinhard"], max_pixels=10_000)
    with TestClient(create_app(small)) as c:
        r = _post_pair(c, comp.read_bytes(), mask.read_bytes())
        assert r.status_code == 400 and "megapixels" in r.json()["error"]


def test_a_bug_is_a_json_error_and_a_logged_traceback(client, service, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "harmonize_pair", broken)
    comp, mask, _ = _labelme()
    r = _post_pair(client, comp.read_bytes(), mask.read_bytes())
    assert r.status_code == 500 and "boom" in r.json()["error"] and "Traceback" not in r.text
    assert "boom" in caplog.text


def _cutout_bytes(comp: Path, mask: Path) -> bytes:
    """The composite's object as an RGBA PNG: its pixels, the mask as alpha."""
    with Image.open(comp) as c, Image.open(mask) as m:
        rgba = c.convert("RGB")
        rgba.putalpha(m.convert("L"))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    return buf.getvalue()


def test_compose_endpoint(client) -> None:
    comp, mask, real = _labelme()
    files = {"cutout": ("cut.png", _cutout_bytes(comp, mask)), "background": ("real.jpg", real.read_bytes())}
    r = client.post("/api/compose", files=files, data={"x": "0", "y": "0", "anchor": "top-left", "model": "gknet"})
    assert r.status_code == 200, r.text
    out, bg, m = _rgb(r.content), _rgb(real), _grey(mask)
    assert (out[m == 0] == bg[m == 0]).all()
    assert _fmse(out, bg, m > 127) < _fmse(_rgb(comp), bg, m > 127)
    # errors: no alpha, off the background, a bad number
    files["cutout"] = ("plain.jpg", comp.read_bytes())
    r = client.post("/api/compose", files=files)
    assert r.status_code == 400 and "plain.jpg has no transparency" in r.json()["error"]
    files["cutout"] = ("cut.png", _cutout_bytes(comp, mask))
    r = client.post("/api/compose", files=files, data={"x": "5000", "y": "0"})
    assert r.status_code == 400 and "off the 256x256 background" in r.json()["error"]
    r = client.post("/api/compose", files=files, data={"x": "1", "y": "2", "scale": "big"})
    assert r.status_code == 400 and "scale must be a number" in r.json()["error"]


def test_12_megapixel_sample_through_http(client) -> None:
    root = require(HADOBE)
    comp, mask = root / "composite_images" / "a0002_1_4.jpg", root / "masks" / "a0002_1.png"
    start = time.perf_counter()
    r = _post_pair(client, comp.read_bytes(), mask.read_bytes(), model="gknet", names=(comp.name, mask.name))
    assert r.status_code == 200, r.text
    assert r.headers["x-harmonize-size"] == "2832x4256"
    out, c, m = _rgb(r.content), _rgb(comp), _grey(mask)
    assert out.shape == (4256, 2832, 3)
    assert (out[m == 0] == c[m == 0]).all(), "background unchanged"
    assert np.abs(out[m > 250] - c[m > 250]).mean() > 1, "foreground changed"
    print(f"12 MP through HTTP: {time.perf_counter() - start:.1f} s")


# --------------------------------------------------------------------------- the command


def test_serve_without_the_web_extra_names_the_install(monkeypatch, capsys) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real_find_spec(name, *a))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "harmonize[web]"' in err and "uvicorn" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_on_a_busy_port_is_one_line(capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port), "--models", "reinhard", "--model", "reinhard"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err


def test_serve_answers_then_stops_on_ctrl_c(tmp_path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "harmonize", "serve", "--port", str(port), "--model", "reinhard", "--models", "reinhard"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line + proc.stderr.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=30) as r:
            assert b'"reinhard"' in r.read()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert rc in (0, 130), err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "harmonize serve: interrupted"


# --------------------------------------------------------------------------- the page in Chromium


@pytest.fixture(scope="module")
def live_server(service):
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium and chromedriver not found (apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="harmonize-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1400,900", f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    driver.set_script_timeout(120)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, script: str, timeout: float = 120.0):
    """Wait until ``script`` (a JS expression) is truthy; fail with the page's error if it shows one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        time.sleep(0.1)
    error = driver.execute_script("return document.getElementById('error').textContent;")
    pytest.fail(f"timed out waiting for {script}; the page shows: {error!r}")


def _open(driver, url: str, mode: str = "pair") -> None:
    driver.get(url)
    _wait(driver, "document.body.dataset.ready === '1' && document.getElementById('model').options.length > 0", 30)
    if mode == "compose":
        driver.find_element("id", "tab-compose").click()


def _upload(driver, input_id: str, path: Path) -> None:
    driver.find_element("id", input_id).send_keys(str(path))


def _choose_model(driver, name: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "model")).select_by_value(name)


def _run_and_fetch(driver) -> bytes:
    """Click Harmonize, wait for the result and read the file the download link gives."""
    driver.execute_script("document.getElementById('after-img').dataset.ready = '0';")
    _wait(driver, "!document.getElementById('run').disabled", 30)
    driver.find_element("id", "run").click()
    _wait(driver, "document.getElementById('after-img').dataset.ready === '1' || document.getElementById('error').textContent")
    error = driver.execute_script("return document.getElementById('error').textContent;")
    assert not error, f"the page shows an error: {error}"
    data = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById('download').href).then(r => r.blob()).then(b => {
          const fr = new FileReader(); fr.onload = () => done(fr.result.split(',')[1]); fr.readAsDataURL(b);
        }).catch(e => done('ERROR ' + e));
        """
    )
    assert not data.startswith("ERROR"), data
    return base64.b64decode(data)


def test_page_harmonizes_a_labelme_sample_with_the_default_gknet(browser, live_server, tmp_path) -> None:
    comp, mask, real = _labelme()
    _open(browser, live_server)
    assert browser.find_element("id", "model").get_attribute("value") == "gknet"
    _upload(browser, "composite-file", comp)
    _upload(browser, "mask-file", mask)
    png = _run_and_fetch(browser)
    out, c, m = _rgb(png), _rgb(comp), _grey(mask)
    assert out.shape == c.shape
    assert (out[m == 0] == c[m == 0]).all(), "background unchanged"
    assert np.abs(out[m > 127] - c[m > 127]).mean() > 5, "foreground changed"
    assert _fmse(out, _rgb(real), m > 127) < _fmse(c, _rgb(real), m > 127)
    assert browser.find_element("id", "download").get_attribute("download") == f"{NAME}_1_1_harmonized.png"
    # the compare slider moves the boundary between before and after
    browser.execute_script("const s = document.getElementById('compare-slider'); s.value = 20; s.dispatchEvent(new Event('input'));")
    assert "80%" in browser.find_element("id", "before-img").get_attribute("style")


def test_page_tries_the_bundled_samples_one_after_another(browser, live_server) -> None:
    from harmonize.demo import bundled_samples

    first, second = bundled_samples()[:2]
    _open(browser, live_server, mode="compose")
    _choose_model(browser, "reinhard")
    browser.find_element("id", "sample").click()  # from the other tab: it opens the composite + mask tab
    _wait(browser, "!document.getElementById('run').disabled", 30)
    assert browser.execute_script("return !document.getElementById('pane-pair').hidden;")
    name = "document.querySelector('#drop-composite .name').textContent"
    assert browser.execute_script(f"return {name};").startswith(f"{first.composite.name} \u00b7 256\u00d7256")
    assert browser.execute_script("return document.querySelector('#drop-mask .name').textContent;").startswith(first.mask.name)
    out, c, m = _rgb(_run_and_fetch(browser)), _rgb(first.composite), _grey(first.mask)
    assert (out[m == 0] == c[m == 0]).all() and np.abs(out[m > 127] - c[m > 127]).mean() > 1, "the sample was harmonized"
    assert browser.find_element("id", "download").get_attribute("download") == f"{first.name}_harmonized.png"
    browser.find_element("id", "sample").click()
    _wait(browser, f"{name}.startsWith('{second.composite.name}')", 30)
    assert not browser.execute_script("return document.getElementById('error').textContent;")


def test_page_shows_the_error_of_a_mask_of_the_wrong_size(browser, live_server, tmp_path) -> None:
    comp, _, _ = _labelme()
    wrong = tmp_path / "wrong_mask.png"
    Image.new("L", (120, 90), 255).save(wrong)
    _open(browser, live_server)
    _choose_model(browser, "reinhard")
    _upload(browser, "composite-file", comp)
    _upload(browser, "mask-file", wrong)
    assert "120\u00d790" in _wait(browser, "document.getElementById('warning').textContent", 10)
    browser.find_element("id", "run").click()
    error = _wait(browser, "document.getElementById('error').textContent", 60)
    assert "wrong_mask.png is 120x90" in error and "must be the size of its image" in error
    assert "Traceback" not in browser.page_source
    # a file the browser cannot decode is an error on the page too
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    _upload(browser, "composite-file", broken)
    assert "broken.jpg: cannot read" in _wait(browser, "document.getElementById('error').textContent", 10)


def test_page_paints_the_mask_with_brush_and_eraser(browser, live_server, tmp_path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    path, img = _synthetic(tmp_path)
    _open(browser, live_server)
    _choose_model(browser, "reinhard")
    _upload(browser, "composite-file", path)
    canvas = browser.find_element("id", "mask-canvas")
    _wait(browser, "document.getElementById('mask-canvas').getBoundingClientRect().width > 0", 10)
    rect = browser.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    k = rect[0] / img.shape[1]  # screen pixels per image pixel
    browser.execute_script("document.getElementById('brush-size').value = arguments[0];", round(16 * k))

    def stroke(points):  # image coordinates; offsets from the canvas centre in screen pixels
        cx, cy = img.shape[1] / 2, img.shape[0] / 2
        chain = ActionChains(browser)
        x0, y0 = points[0]
        chain.move_to_element_with_offset(canvas, round((x0 - cx) * k), round((y0 - cy) * k)).click_and_hold()
        for x, y in points[1:]:
            chain.move_by_offset(round((x - x0) * k), round((y - y0) * k))
            x0, y0 = x, y
        chain.release().perform()

    stroke([(40, 120), (120, 120), (200, 120), (280, 120)])  # brush along the band
    browser.find_element("id", "eraser").click()
    stroke([(160, 95), (160, 145)])  # erase a gap across it
    png = _run_and_fetch(browser)
    out = _rgb(png)
    a = img.astype(np.int16)
    assert out.shape == a.shape
    assert np.abs(out[116:124, 60:140] - a[116:124, 60:140]).mean() > 5, "the painted band is harmonized"
    assert (out[:80] == a[:80]).all() and (out[170:] == a[170:]).all(), "unpainted rows unchanged"
    assert (out[110:130, 156:164] == a[110:130, 156:164]).all(), "the erased gap is unchanged"


def test_page_places_a_cutout_on_a_background(browser, live_server, tmp_path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    from harmonize.cutout import compose

    comp, mask, real = _labelme()
    cut = tmp_path / "cutout.png"
    cut.write_bytes(_cutout_bytes(comp, mask))
    _open(browser, live_server, mode="compose")
    _choose_model(browser, "reinhard")
    _upload(browser, "cutout-file", cut)
    _upload(browser, "background-file", real)
    _wait(browser, "document.getElementById('cutout-img').getBoundingClientRect().width > 0", 10)
    start = browser.execute_script("return {...S.place};")
    ActionChains(browser).drag_and_drop_by_offset(browser.find_element("id", "cutout-img"), 40, -30).perform()
    moved = browser.execute_script("return {...S.place};")
    assert moved["x"] > start["x"] and moved["y"] < start["y"], (start, moved)
    browser.execute_script("const s = document.getElementById('scale'); s.value = 80; s.dispatchEvent(new Event('input'));")
    place = browser.execute_script("return {...S.place};")
    assert place["scale"] == pytest.approx(0.8)
    png = _run_and_fetch(browser)
    # the server's result is the library's compose at the placement the page shows
    expected = compose(cut, real, at=(place["x"], place["y"]), scale=place["scale"], anchor="top-left", model="reinhard", device="cpu")
    out = _rgb(png)
    assert (out == np.asarray(expected).astype(np.int16)).all()
    from harmonize.cutout import paste

    _, m = paste(cut, real, at=(place["x"], place["y"]), scale=place["scale"], anchor="top-left")
    outside = (m[0] == 0).numpy()
    assert (out[outside] == _rgb(real)[outside]).all(), "background unchanged outside the cutout"


def test_page_handles_the_12_megapixel_sample(browser, live_server) -> None:
    root = require(HADOBE)
    comp, mask = root / "composite_images" / "a0002_1_4.jpg", root / "masks" / "a0002_1.png"
    _open(browser, live_server)
    _upload(browser, "composite-file", comp)
    _upload(browser, "mask-file", mask)
    start = time.perf_counter()
    png = _run_and_fetch(browser)
    out, c, m = _rgb(png), _rgb(comp), _grey(mask)
    assert out.shape == (4256, 2832, 3)
    assert (out[m == 0] == c[m == 0]).all(), "background unchanged"
    assert np.abs(out[m > 250] - c[m > 250]).mean() > 1, "foreground changed"
    print(f"12 MP through the page: {time.perf_counter() - start:.1f} s")
