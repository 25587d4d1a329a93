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
    with TestClient(app, base_url="http://localhost:8000") as c:
        yield c, app


def test_upload_poll_download_within_budget(client):
    c, app = client
    assert c.get("/").status_code == 200 and "imguard" in c.get("/").text
    info = c.get("/api/info").json()
    assert [s["name"] for s in info["strengths"]] == ["low", "medium", "high", "max", "fast"]
    assert [bool(s["caveat"]) for s in info["strengths"]] == [False, False, False, True, False]
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
    assert not list(folder.glob("upload-*"))  # the uploaded files are gone once the job ran
    original = np.asarray(Image.open(io.BytesIO(c.get(job["results"][0]["original"]).content)).convert("RGB"))
    np.testing.assert_array_equal(original, arr_a)  # small photos: the page's copy after a reload is the photo
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
    with TestClient(app, base_url="http://localhost") as c:
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
    with TestClient(app, base_url="http://localhost") as c:
        data, _ = _png()
        first = c.post("/api/jobs", files=[("files", ("a.png", data, "image/png"))], data={"strength": "low", "steps": "2"}).json()
        second = c.post("/api/jobs", files=[("files", ("b.png", data, "image/png"))], data={"strength": "low", "steps": "2"}).json()
        j1, _ = _wait(c, first["id"])
        j2, _ = _wait(c, second["id"])
        assert j1["status"] == "failed" and "fails on purpose" in j1["error"]
        assert j2["status"] == "done"


# --- security: Host, Origin, token, limits, names, headers --------------------------------

def _upload(c, name="a.png", data=None, headers=None, **form):
    data = data if data is not None else _png()[0]
    return c.post("/api/jobs", files=[("files", (name, data, "image/png"))], data={"strength": "low", "steps": "1", **form},
                  headers=headers or {})


def test_a_rebinding_host_is_refused(client):
    c, app = client
    job_id = _upload(c).json()["id"]
    _wait(c, job_id)
    evil = {"Host": "rebind.attacker.example:8000"}
    for method, url in (("GET", "/api/jobs"), ("GET", f"/api/jobs/{job_id}/zip"), ("DELETE", f"/api/jobs/{job_id}"), ("GET", "/")):
        r = c.request(method, url, headers=evil)
        assert r.status_code == 400 and "does not answer to the name 'rebind.attacker.example'" in r.json()["detail"], (method, url)
    assert c.get(f"/api/jobs/{job_id}").status_code == 200  # nothing was deleted
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
        assert c.get("/api/jobs", headers={"Host": host}).status_code == 200, host


def test_allow_host_adds_a_name(tiny_protector, tmp_path):
    app = create_app(tiny_protector, tmp_dir=tmp_path, allow_hosts=["photos.lan"])
    with TestClient(app, base_url="http://photos.lan:8000") as c:
        assert c.get("/api/jobs").status_code == 200
        assert c.get("/api/jobs", headers={"Host": "other.lan"}).status_code == 400


def test_a_foreign_origin_cannot_change_anything(client):
    c, app = client
    for headers in ({"Origin": "http://attacker.example"}, {"Origin": "null"}, {"Referer": "http://attacker.example/page"},
                    {"Origin": "http://localhost:9999"}):
        r = _upload(c, headers=headers)
        assert r.status_code == 403 and "another web site" in r.json()["detail"], headers
    assert c.get("/api/jobs").json()["jobs"] == []
    job_id = _upload(c, headers={"Origin": "http://localhost:8000"}).json()["id"]  # the page itself
    _wait(c, job_id)
    assert c.delete(f"/api/jobs/{job_id}", headers={"Origin": "http://attacker.example"}).status_code == 403
    assert c.delete(f"/api/jobs/{job_id}", headers={"Referer": "http://localhost:8000/"}).status_code == 200


def test_a_token_is_required_beyond_loopback(tiny_protector, tmp_path):
    with pytest.raises(ValueError, match="needs a token"):
        create_app(tiny_protector, tmp_dir=tmp_path, host="0.0.0.0")
    app = create_app(tiny_protector, tmp_dir=tmp_path, host="192.168.1.20", token="s3cret-token")
    with TestClient(app, base_url="http://192.168.1.20:8000", follow_redirects=False) as c:
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200  # the page itself is public
        r = c.get("/api/jobs")
        assert r.status_code == 401 and "?token=" in r.json()["detail"]
        assert _upload(c).status_code == 401
        assert c.get("/api/jobs", headers={"X-Imguard-Token": "wrong"}).status_code == 401
        assert c.get("/api/jobs", headers={"X-Imguard-Token": "s3cret-token"}).status_code == 200
        r = c.get("/?token=s3cret-token")  # the printed link: the token moves into a cookie, out of the URL
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "imguard_token=s3cret-token" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
        assert "SameSite=Strict" in r.headers["set-cookie"]
        c.cookies.set("imguard_token", "s3cret-token")
        assert c.get("/api/jobs").status_code == 200
        assert _upload(c).status_code == 202


def test_the_queue_is_capped_with_a_clear_429(tiny_protector, tmp_path):
    release = threading.Event()

    def slow_factory():  # the models take a while to load: uploads pile up meanwhile
        release.wait(60)
        return tiny_protector

    app = create_app(protector_factory=slow_factory, tmp_dir=tmp_path, limits=Limits(max_queued=2))
    with TestClient(app, base_url="http://localhost") as c:
        first = _upload(c).json()["id"]
        t0 = time.time()
        while c.get(f"/api/jobs/{first}").json()["status"] != "running" and time.time() - t0 < 10:
            time.sleep(0.02)
        data, _ = _png((64, 48), 5)
        queued = [_upload(c, data=data).json() for _ in range(2)]
        assert [q["position"] for q in queued] == [1, 2]
        r = _upload(c, data=data)
        assert r.status_code == 429 and r.headers["retry-after"]
        assert "the queue is full: 2 jobs are waiting" in r.json()["detail"] and "number 3 in line" in r.json()["detail"]
        # queued jobs hold their uploads as uploaded (compressed, on disk), not decoded images
        w = app.state.worker if hasattr(app.state, "worker") else None
        root = Path(app.state.tmp_root)
        for q in queued:
            files = list((root / q["id"]).glob("upload-*"))
            assert len(files) == 1 and files[0].read_bytes() == data
        assert len(list(root.iterdir())) == 3  # the refused upload left nothing behind
        release.set()
        for q in [first] + [q["id"] for q in queued]:
            assert _wait(c, q)[0]["status"] == "done"
        assert _upload(c).status_code == 202  # room again
        del w


def _asgi_post(app, chunks, headers=(), delay=0.0):
    """POST /api/jobs straight to the ASGI app, the body in ``chunks``; returns (status, body, chunks read)."""
    import asyncio

    read = 0
    sent: list[dict] = []

    async def receive():
        nonlocal read
        if delay:
            await asyncio.sleep(delay)
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/jobs", "raw_path": b"/api/jobs", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"localhost"), (b"content-type", b"multipart/form-data; boundary=xyz"), *headers],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body.decode(), read


def test_the_body_limit_is_enforced_while_reading(tiny_protector, tmp_path):
    app = create_app(tiny_protector, tmp_dir=tmp_path, limits=Limits(max_body=100_000))
    with TestClient(app, base_url="http://localhost") as c:
        chunks = [b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"] + [b"0" * 10_000] * 100
        status, body, read = _asgi_post(app, chunks)  # 1 MB without a Content-Length
        assert status == 413 and "larger than" in body
        assert read <= 12 < len(chunks)  # refused at the limit, long before the end of the body
        status, body, read = _asgi_post(app, chunks, headers=[(b"content-length", b"40000000")])
        assert status == 413 and read == 0  # a declared 40 MB is refused before reading anything
        assert list(Path(app.state.tmp_root).iterdir()) == []
        assert c.get("/api/jobs").json()["jobs"] == []


def test_a_slow_upload_is_cut_off(tiny_protector, tmp_path):
    app = create_app(tiny_protector, tmp_dir=tmp_path, limits=Limits(read_timeout=0.5))
    with TestClient(app, base_url="http://localhost"):
        chunks = [b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"] + [b"0"] * 100
        t0 = time.time()
        status, body, read = _asgi_post(app, chunks, delay=0.1)  # 1 byte per 0.1 s: 10 s in all
        assert status == 408 and "longer than" in body
        assert time.time() - t0 < 3 and read < 20


def test_too_many_parts_are_refused_while_parsing(client):
    c, app = client
    data, _ = _png((8, 8))
    r = c.post("/api/jobs", files=[("files", (f"{i}.png", data, "image/png")) for i in range(25)], data={"strength": "low"})
    assert r.status_code == 413 and "the limit is 20" in r.json()["detail"]
    assert list(Path(app.state.tmp_root).iterdir()) == []


def test_zip_and_download_names_are_safe(client):
    c, app = client
    names = ["..\\..\\Users\\Public\\evil.png", "nul", "con.png", "../../etc/passwd", "a\u202egnp.exe", "x" * 300 + ".png"]
    data, _ = _png((16, 16))
    r = c.post("/api/jobs", files=[("files", (n, data, "image/png")) for n in names], data={"strength": "low", "steps": "1"})
    assert r.status_code == 202, r.text
    job, _ = _wait(c, r.json()["id"])
    assert job["status"] == "done", job
    z = zipfile.ZipFile(io.BytesIO(c.get(f"/api/jobs/{job['id']}/zip").content))
    arcs = z.namelist()
    assert len(arcs) == len(set(arcs)) == len(names)
    assert arcs[:3] == ["evil-protected.png", "_nul-protected.png", "_con-protected.png"]
    for arc in arcs:
        assert not set(arc) & set('\\/:\0\u202e') and not arc.startswith(".") and len(arc) <= 120, arc
    got = c.get(job["results"][0]["protected"])
    assert 'filename="evil-protected.png"' in got.headers["content-disposition"]


def test_safe_filename_rules():
    from imguard.io import safe_filename

    assert safe_filename("..\\..\\Users\\Public\\evil-protected.png") == "evil-protected.png"
    assert safe_filename("a\0b.png") == "a_b.png"
    assert safe_filename("..") == "image" and safe_filename("") == "image" and safe_filename("\0") == "image"
    assert safe_filename("NUL") == "_NUL" and safe_filename("com1.tar.gz") == "_com1.tar.gz" and safe_filename("console.png") == "console.png"
    assert safe_filename("tab\there?.png") == "tab_here_.png"
    long = safe_filename("y" * 500 + ".png")
    assert len(long) == 120 and long.endswith(".png")


def test_security_headers_and_a_page_without_inline_code(client):
    import re

    c, app = client
    for url in ("/", "/api/info", "/static/app.js", "/no-such-page"):
        h = c.get(url).headers
        assert "script-src 'self'" in h["content-security-policy"] and "frame-ancestors 'none'" in h["content-security-policy"]
        assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY" and h["referrer-policy"] == "same-origin"
    assert c.get("/api/info").headers["cache-control"] == "no-store"
    page = c.get("/").text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page) and "<style" not in page and " style=" not in page
    assert re.search(r"<script[^>]*src=\"/static/app.js\"", page)
    assert " style=" not in c.get("/static/app.js").text and c.get("/static/style.css").status_code == 200


def test_api_docs_only_when_asked(client, tiny_protector, tmp_path):
    c, app = client
    assert c.get("/openapi.json").status_code == 404 and c.get("/docs").status_code == 404
    with TestClient(create_app(tiny_protector, tmp_dir=tmp_path, api_docs=True), base_url="http://localhost") as d:
        assert d.get("/openapi.json").status_code == 200 and d.get("/docs").status_code == 200


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (its header only: a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_a_pixel_bomb_says_too_many_pixels(client):
    c, app = client
    for w, h in ((20_000, 20_000), (1000, 1000)):  # 400 Mpx (Pillow refuses to open it) and above this server's limit
        r = _upload(c, name="bomb.png", data=_png_header(w, h))
        assert r.status_code == 413 and "bomb.png" in r.json()["detail"] and "too many pixels" in r.json()["detail"], r.text
    assert "400 Mpixels" in _upload(c, name="bomb.png", data=_png_header(20_000, 20_000)).json()["detail"]


def test_errors_reach_the_page_without_server_paths(tmp_path):
    class Broken:
        def __init__(self, message, kind=ValueError):
            self.message, self.kind = message, kind

        def protect(self, img, **kw):
            raise self.kind(self.message)

    for protector, expect in ((Broken(f"imguard: cannot use {tmp_path}/secret/model.bin here"), "cannot use model.bin here"),
                              (Broken(f"[Errno 2] No such file: '{tmp_path}/x'", OSError), "the protection failed (OSError)")):
        with TestClient(create_app(protector, tmp_dir=tmp_path), base_url="http://localhost") as c:
            job, _ = _wait(c, _upload(c).json()["id"])
            assert job["status"] == "failed" and expect in job["error"] and str(tmp_path) not in job["error"], job["error"]


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
            from imguard.presets import STRENGTHS

            WebDriverWait(driver, 20).until(lambda d: len(Select(d.find_element(By.ID, "strength")).options) == len(STRENGTHS))
            Select(driver.find_element(By.ID, "strength")).select_by_value("low")
            driver.find_element(By.ID, "steps").send_keys("3")
            driver.find_element(By.ID, "files").send_keys(str(dev_face))
            driver.find_element(By.ID, "go").click()
            link = WebDriverWait(driver, 180).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".result a.download")))
            href = link.get_attribute("href")
            assert driver.find_element(By.CSS_SELECTOR, ".result img.after").get_attribute("src").startswith(url)
            shown = float(driver.find_element(By.CSS_SELECTOR, ".result .achieved").get_attribute("textContent"))
            assert driver.find_element(By.CSS_SELECTOR, ".result .headline").text  # a sentence for people
            assert not [e for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
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


def test_serve_command_spells_limits_as_protect_and_prints_the_token_once(monkeypatch, capsys):
    import imguard.serve as serve_pkg
    from imguard.cli import main

    got = {}
    monkeypatch.setattr(serve_pkg, "serve", lambda app, host, port: got.update(app=app, host=host, port=port))
    seen = {}
    real = serve_pkg.create_app
    monkeypatch.setattr(serve_pkg, "create_app", lambda **kw: seen.update(kw) or real(**kw))
    assert main(["serve", "--max-pixels", "1000000", "--port", "8123"]) == 0
    assert seen["limits"].max_pixels == 1_000_000 and seen["token"] is None and got["host"] == "127.0.0.1"
    assert "http://localhost:8123/ " in capsys.readouterr().out
    assert main(["serve", "--max-mpixels", "2.5"]) == 0  # the old spelling still works, and says so
    assert seen["limits"].max_pixels == 2_500_000 and "--max-mpixels is deprecated" in capsys.readouterr().err
    assert main(["serve", "--host", "0.0.0.0", "--allow-host", "photos.lan"]) == 0
    out, err = capsys.readouterr()
    token = seen["token"]
    assert token and len(token) >= 24 and out.count(token) == 1 and f"?token={token}" in out
    assert "every computer that can reach this one" in err and "download and delete" in err
    assert seen["allow_hosts"] == ["photos.lan"]
