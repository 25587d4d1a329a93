"""`imguard serve`: the HTTP API with FastAPI's TestClient (tiny models), and the page in a real
headless browser (Selenium + Debian's chromium/chromium-driver)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

from imguard.serve import Limits, create_app, difference_image  # noqa: E402


def _png(size=(48, 40), seed=0) -> tuple[bytes, np.ndarray]:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue(), arr


def _wait(client, job_id, timeout=120):
    t0 = time.time()
    seen_progress = False
    while time.time() - t0 < timeout:
        j = client.get(f"/api/jobs/{job_id}").json()
        if j["status"] == "running" and j["progress"]["step"] > 0:
            seen_progress = True
        if j["status"] in ("done", "failed"):
            return j, seen_progress
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {j}")


@pytest.fixture
def client(tiny_protector, tmp_path):
    app = create_app(tiny_protector, tmp_dir=tmp_path, limits=Limits(max_bytes=200_000, max_pixels=300 * 300))
    with TestClient(app) as c:
        yield c, app


def test_upload_poll_download_within_budget(client):
    c, app = client
    assert c.get("/").status_code == 200 and "imguard" in c.get("/").text
    info = c.get("/api/info").json()
    assert [s["name"] for s in info["strengths"]] == ["low", "medium", "high"]
    data_a, arr_a = _png((48, 40), 0)
    data_b, arr_b = _png((32, 32), 1)
    r = c.post("/api/jobs", files=[("files", ("alice.png", data_a, "image/png")), ("files", ("bob.png", data_b, "image/png"))],
               data={"strength": "low", "steps": "4", "seed": "0"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert c.get("/api/jobs").json()["jobs"][0]["id"] == job_id
    job, _ = _wait(c, job_id)
    assert job["status"] == "done", job
    assert job["progress"]["steps"] == 4 and job["progress"]["step"] == 4  # per-step progress reached the end
    assert [res["name"] for res in job["results"]] == ["alice.png", "bob.png"]
    for res, arr in zip(job["results"], (arr_a, arr_b)):
        assert res["strength"] == "low" and res["steps"] == 4
        got = c.get(res["protected"])
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert res["download_name"] in got.headers["content-disposition"]
        out = np.asarray(Image.open(io.BytesIO(got.content)).convert("RGB")).astype(int)
        assert out.shape == arr.shape
        d = np.abs(out - arr.astype(int)).max()
        assert d <= res["eps"] and abs(d - res["achieved"]) < 0.51  # the downloaded file keeps the budget
        diff = np.asarray(Image.open(io.BytesIO(c.get(res["diff"]).content))).astype(int)
        np.testing.assert_array_equal(diff, difference_image(arr, out.astype(np.uint8)))
        assert res["objective"][1] >= res["objective"][0] - 1e-6  # higher = stronger, and it did not get worse
    z = zipfile.ZipFile(io.BytesIO(c.get(f"/api/jobs/{job_id}/zip").content))
    assert sorted(z.namelist()) == ["alice-protected.png", "bob-protected.png"]
    folder = Path(app.state.tmp_root) / job_id
    assert not list(folder.glob("upload-*"))  # the uploaded files are gone once decoded
    assert folder.is_dir()
    assert c.delete(f"/api/jobs/{job_id}").status_code == 200
    assert not folder.exists() and c.get(f"/api/jobs/{job_id}").status_code == 404


def test_bad_uploads_are_rejected_with_a_clear_message(client):
    c, app = client
    r = c.post("/api/jobs", files=[("files", ("notes.txt", b"hello, not a photo", "text/plain"))], data={"strength": "low"})
    assert r.status_code == 415 and "notes.txt is not an image" in r.json()["detail"]
    big = np.zeros((400, 400, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    r = c.post("/api/jobs", files=[("files", ("huge.png", buf.getvalue(), "image/png"))], data={"strength": "low"})
    assert r.status_code == 413 and "400x400" in r.json()["detail"] and "Mpixels" in r.json()["detail"]
    r = c.post("/api/jobs", files=[("files", ("heavy.png", b"\x89PNG" + b"0" * 300_000, "image/png"))], data={"strength": "low"})
    assert r.status_code == 413 and "heavy.png is larger than" in r.json()["detail"]
    ok, _ = _png()
    r = c.post("/api/jobs", files=[("files", ("a.png", ok, "image/png"))], data={"strength": "extreme"})
    assert r.status_code == 400 and "low, medium, high" in r.json()["detail"]
    r = c.post("/api/jobs", files=[("files", ("a.png", ok, "image/png"))], data={"strength": "low", "steps": "many"})
    assert r.status_code == 400 and "steps must be a whole number" in r.json()["detail"]
    # nothing of the rejected uploads is left on disk, and no job was queued
    assert list(Path(app.state.tmp_root).iterdir()) == []
    assert c.get("/api/jobs").json()["jobs"] == []


def test_temp_folder_removed_at_shutdown(tiny_protector, tmp_path):
    app = create_app(tiny_protector, tmp_dir=tmp_path)
    with TestClient(app) as c:
        data, _ = _png()
        job_id = c.post("/api/jobs", files=[("files", ("a.png", data, "image/png"))], data={"strength": "low", "steps": "2"}).json()["id"]
        job, _ = _wait(c, job_id)
        root = Path(app.state.tmp_root)
        assert job["status"] == "done" and (root / job_id).is_dir()
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_a_failing_job_reports_its_error_and_the_worker_keeps_going(tmp_path, tiny_protector):
    class Flaky:
        calls = 0

        def protect(self, img, **kw):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise ValueError("imguard: the first call fails on purpose")
            return tiny_protector.protect(img, **kw)

    app = create_app(Flaky(), tmp_dir=tmp_path)
    with TestClient(app) as c:
        data, _ = _png()
        first = c.post("/api/jobs", files=[("files", ("a.png", data, "image/png"))], data={"strength": "low", "steps": "2"}).json()
        second = c.post("/api/jobs", files=[("files", ("b.png", data, "image/png"))], data={"strength": "low", "steps": "2"}).json()
        j1, _ = _wait(c, first["id"])
        j2, _ = _wait(c, second["id"])
        assert j1["status"] == "failed" and "fails on purpose" in j1["error"]
        assert j2["status"] == "done"


# --- the page in a real browser ----------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _browser_or_skip():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if missing:
        why = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn in a thread on a free localhost port."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > 20:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(20)


def headless_chromium(width=1280, height=1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def test_page_in_a_headless_browser(tiny_protector, tmp_path, dev_face):
    _browser_or_skip()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    app = create_app(tiny_protector, tmp_dir=tmp_path)
    with ServerThread(app) as url:
        driver = headless_chromium()
        try:
            driver.get(url)
            WebDriverWait(driver, 20).until(lambda d: len(Select(d.find_element(By.ID, "strength")).options) == 3)
            Select(driver.find_element(By.ID, "strength")).select_by_value("low")
            driver.find_element(By.ID, "steps").send_keys("3")
            driver.find_element(By.ID, "files").send_keys(str(dev_face))
            driver.find_element(By.ID, "go").click()
            link = WebDriverWait(driver, 180).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".result a.download")))
            href = link.get_attribute("href")
            assert driver.find_element(By.CSS_SELECTOR, ".result img.after").get_attribute("src").startswith(url)
            shown = float(driver.find_element(By.CSS_SELECTOR, ".result .achieved").text)
            queue_status = driver.find_element(By.CSS_SELECTOR, "#queue tr .status").text
        finally:
            driver.quit()
        with urllib.request.urlopen(href) as r:
            data = r.read()
    assert queue_status == "done"
    out = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    orig = np.asarray(Image.open(dev_face).convert("RGB")).astype(int)
    assert out.shape == orig.shape
    from imguard.presets import PRESETS

    eps = PRESETS["low"].options["eps"]  # the 'low' preset's budget
    d = np.abs(out - orig).max()
    assert 0 < d <= eps and abs(d - shown) < 0.51


def test_browser_check_skips_without_chromium_but_fails_under_ci(monkeypatch, tmp_path):
    import test_serve as me

    monkeypatch.setattr(me, "CHROMEDRIVER", str(tmp_path / "no-chromedriver"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromedriver"):
        me._browser_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        me._browser_or_skip()
