"""The web chat page, started as users start it (`unitune web`) and used in headless Chromium:
send a message, see the reply, save a screenshot; and the history really reaches the model."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.slow


def test_the_whole_history_reaches_the_model(chat_run):
    from unitune.infer.engine import Engine
    from unitune.infer.generate import Decoding
    from unitune.serve.web import reply

    engine = Engine(str(chat_run), device="cpu")
    prompts = []
    submit = engine.submit
    engine.submit = lambda request, sink=None: (prompts.append(request.prompt),
                                                submit(request, sink))[1]
    try:
        decoding = Decoding(max_new_tokens=4)
        history = list(reply(engine, "first question", [], "run", "Be brief.", decoding))[-1]
        assert [m["role"] for m in history] == ["user", "assistant"]
        history = list(reply(engine, "second question", history, "run", "Be brief.",
                             decoding))[-1]
    finally:
        engine.close()
    assert len(history) == 4 and len(prompts) == 2
    assert "Be brief." in prompts[1] and "first question" in prompts[1]
    assert history[1]["content"] in prompts[1] and prompts[1].index("first question") < \
        prompts[1].index("second question")


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("UNITUNE_REQUIRE_SHARED") == "1":
        pytest.fail("Chromium is missing (CI installs Debian's chromium and chromium-driver)")
    return found


def _browser(url: str, proc):
    """Headless Chromium (found by the caller) on ``url`` once ``proc``'s page answers."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, "the page did not come up"
        time.sleep(0.5)
    driver = webdriver.Chrome(options=options, service=Service(
        shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    driver.get(url)
    return driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_answers_in_headless_chromium(chat_run, tmp_path):
    if _chromium() is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium chromium-driver)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    # a sampled reply of plain words (what the page shows as is), and the seed that gives it
    from unitune.infer.engine import Engine, Request
    from unitune.infer.generate import Decoding

    engine = Engine(str(chat_run), device="cpu")
    question = [{"role": "user", "content": "Count the letters."}]
    try:
        prompt = engine.render_chat("tiny-llama-test", question)
        for seed in range(50):
            text = engine.generate(Request("tiny-llama-test", prompt, Decoding(
                max_new_tokens=8, do_sample=True, seed=seed))).seqs[0].text.strip()
            if text and all(c.isascii() and (c.isalnum() or c == " ") for c in text):
                break
        else:
            pytest.fail("no seed gives a plain-words reply")
    finally:
        engine.close()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from unitune.cli import main; raise "
                             "SystemExit(main())", "web", str(chat_run), "--port", str(port),
                             "--device", "cpu", "--max-new-tokens", "8", "--model",
                             "tiny-llama-test", "--do-sample", "--seed", str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = None
    try:
        driver = _browser(f"http://127.0.0.1:{port}/", proc)
        wait = WebDriverWait(driver, 60)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#message textarea"))
        box.send_keys("Count the letters.")
        box.send_keys(Keys.ENTER)

        user = wait.until(lambda d: d.find_elements(
            By.CSS_SELECTOR, '#conversation [data-testid="user"]'))
        assert "Count the letters." in user[0].text
        # the reply streams in: wait for all of it; it is the engine's own
        wait.until(lambda d: [b.text.strip() for b in d.find_elements(
            By.CSS_SELECTOR, '#conversation [data-testid="bot"]')] == [text])
        shot = tmp_path / "web.png"
        time.sleep(1)
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=30)


def test_the_page_sits_beside_the_api_in_one_process(chat_run, start_server):
    server, url = start_server([str(chat_run), "--web"])
    try:
        models = httpx.get(f"{url}/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["tiny-llama-test", "run"]
        page = httpx.get(f"{url}/ui/", timeout=30, follow_redirects=True)
        assert page.status_code == 200 and "gradio" in page.text.lower()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_person_judges_the_arena_in_headless_chromium(chat_run, tmp_path):
    if _chromium() is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium chromium-driver)")
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Count the letters. a b\nSort 3 1 2.\n")
    out = tmp_path / "arena"
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from unitune.cli import main; raise "
                             "SystemExit(main())", "arena", "--model", "base=tiny-llama-test",
                             "--model", f"tuned={chat_run}", "--prompts", str(prompts),
                             "--human", "--port", str(port), "-o", str(out), "--device", "cpu",
                             "--max-new-tokens", "6"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = None
    try:
        driver = _browser(f"http://127.0.0.1:{port}/", proc)
        wait = WebDriverWait(driver, 60)
        progress = lambda d: d.find_element(By.ID, "progress").text  # noqa: E731
        wait.until(lambda d: "0 of 2 comparisons judged" in progress(d))
        question = driver.find_element(By.CSS_SELECTOR, "#question textarea")
        on_screen = question.get_attribute("value")
        assert on_screen in ("Count the letters. a b", "Sort 3 1 2.")
        driver.find_element(By.ID, "vote-a").click()
        wait.until(lambda d: "1 of 2 comparisons judged" in progress(d))
        driver.find_element(By.ID, "vote-tie").click()
        wait.until(lambda d: "2 of 2 comparisons judged" in progress(d))
        wait.until(lambda d: "base" in d.find_element(By.ID, "leaderboard").text)
        driver.save_screenshot(str(tmp_path / "arena.png"))
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
    rows = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in rows] == ["A", "C"] and {r["judge"] for r in rows} == {"human"}
    assert rows[0]["index"] == ["Count the letters. a b", "Sort 3 1 2."].index(on_screen)
    assert json.loads((out / "leaderboard.json").read_text())["comparisons"] == 2
