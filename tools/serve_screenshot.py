"""Take docs/img/serve.png: the `imguard serve` page with a real result, in headless chromium.

    python tools/serve_screenshot.py [--steps 8] [--face ../shared/assets/faces/dev/sample1/0051_01.png]

The photo is blurred in the screenshot (the dev portraits are research-use images and stay out
of the repository); the difference image and every number are the real run's. Runs the real offline models of the 'low' preset (SFace + the bundled TAESD) at 256 px on
the CPU, so it takes a minute or two. Needs chromium and chromium-driver (apt) and selenium.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--face", default=str(ROOT.parent / "shared/assets/faces/dev/sample1/0051_01.png"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "docs/img/serve.png"))
    args = ap.parse_args()

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    import imguard
    from imguard.serve import create_app

    app = create_app(imguard.Protector(strength="low", device="cpu", working_size=256))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,1250"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(driver, 20).until(lambda d: len(Select(d.find_element(By.ID, "strength")).options) == 3)
        Select(driver.find_element(By.ID, "strength")).select_by_value("low")
        driver.find_element(By.ID, "steps").send_keys(str(args.steps))
        driver.find_element(By.ID, "files").send_keys(str(Path(args.face).resolve()))
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 900).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".result a.download")))
        time.sleep(1.0)  # let the images paint
        # the dev portraits are research-use photos: they stay out of the repository, so the
        # screenshot blurs the before/after photos (the difference image and the numbers are real)
        driver.execute_script(
            "document.querySelectorAll('.result img[alt=before], .result img.after').forEach("
            "i => { i.style.filter = 'blur(18px)'; i.parentElement.querySelector('figcaption').textContent += "
            "' (blurred for this screenshot)'; });")
        time.sleep(0.3)
        driver.save_screenshot(args.out)
        print(driver.find_element(By.CSS_SELECTOR, ".result").text)
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(20)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
