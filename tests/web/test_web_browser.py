"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
a dead job is shown with its hostile arguments escaped, "retry" moves it back to its queue,
the queue page shows the count. In CI (CI=true) a missing browser fails; elsewhere the
tests skip with the reason."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefork_work.client import Client
from prefork_work.job import Job
from prefork_work.keys import Keys

NS = "webui"
K = Keys(NS)
CHROMIUM = os.environ.get("PREFORK_WORK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
HOSTILE = {"html": "<script>window.__pwned = 1</script>", "quote": '"><img src=x onerror="window.__pwned=2">',
           "plain": "it's \"quoted\""}


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the browser test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        _missing(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        _missing("the web extra is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def dashboard(redis_server, r, request) -> Iterator[str]:
    """The app served by a real uvicorn on a free loopback port, in a thread of this process."""
    import uvicorn

    from prefork_work.web import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(Client(NS, redis_server.client()), token=getattr(request, "param", None))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_dead_job_retried_from_the_browser(browser, dashboard, r, tmp_path) -> None:
    r.sadd(K.known_jobs(), "wat")
    job = Job(name="wat", id="0123456789abcdef01234567", t=1_700_000_000, args=HOSTILE, fails=1,
              err="boom <b>bold</b>", failed_at=1_700_000_000)
    r.zadd(K.dead(), {job.to_json(): 1_700_000_001})

    page = browser.new_page()  # type: ignore[attr-defined]
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(dashboard + "/ui/dead")
    row = page.locator(f"tr[data-job-id='{job.id}']")
    assert row.count() == 1
    args_text = row.locator("td.args").inner_text()
    assert HOSTILE["html"] in args_text and "onerror" in args_text  # shown as text
    assert row.locator("td.err").inner_text() == "boom <b>bold</b>"
    assert page.locator("img").count() == 0 and page.evaluate("window.__pwned") is None
    page.screenshot(path=str(tmp_path / "dead.png"), full_page=True)

    with page.expect_navigation():
        row.get_by_role("button", name="retry").click()
    assert page.locator("#job-count").inner_text() == "0"
    assert r.zcard(K.dead()) == 0 and r.llen(K.jobs("wat")) == 1
    assert Job.from_json(r.lindex(K.jobs("wat"), 0)).args == HOSTILE

    page.goto(dashboard + "/ui/queues")
    assert page.locator("tr[data-queue='wat'] td.count").inner_text() == "1"
    page.screenshot(path=str(tmp_path / "queues.png"), full_page=True)
    assert (tmp_path / "queues.png").stat().st_size > 1000
    assert page.evaluate("window.__pwned") is None and dialogs == []
    page.close()


def test_pause_button_and_errors_are_shown_as_text(browser, dashboard, r) -> None:
    r.sadd(K.known_jobs(), "wat")
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(dashboard + "/ui/queues")
    with page.expect_navigation():
        page.locator("tr[data-queue='wat']").get_by_role("button", name="pause").click()
    assert page.locator("tr[data-queue='wat'] td.paused").inner_text() == "paused"
    assert r.exists(K.paused("wat"))
    # an API error reaches the operator as text in the flash box: a dead job that someone
    # else deleted after the page was drawn
    job = Job(name="wat", id="ffffffffffffffffffffffff", t=1, args={}, fails=1, err="<i>x</i>")
    r.zadd(K.dead(), {job.to_json(): 5})
    page.goto(dashboard + "/ui/dead")
    r.delete(K.dead())
    page.locator(f"tr[data-job-id='{job.id}']").get_by_role("button", name="retry").click()
    page.locator("#flash").wait_for(state="visible", timeout=10_000)
    assert page.locator("#flash").inner_text() == "nothing retried"
    page.close()


@pytest.mark.parametrize("dashboard", ["tok3n"], indirect=True)
def test_a_change_asks_for_the_token_once(browser, dashboard, r) -> None:
    r.sadd(K.known_jobs(), "wat")
    page = browser.new_page()  # type: ignore[attr-defined]
    prompts: list[str] = []

    def answer(dialog) -> None:  # type: ignore[no-untyped-def]
        prompts.append(dialog.message)
        dialog.accept("tok3n")

    page.on("dialog", answer)
    page.goto(dashboard + "/ui/queues")
    assert "changes need the token" in page.locator("header").inner_text()
    with page.expect_navigation():
        page.locator("tr[data-queue='wat']").get_by_role("button", name="pause").click()
    assert r.exists(K.paused("wat")) and len(prompts) == 1 and "token" in prompts[0]
    with page.expect_navigation():  # the tab keeps the token: no second prompt
        page.locator("tr[data-queue='wat']").get_by_role("button", name="unpause").click()
    assert not r.exists(K.paused("wat")) and len(prompts) == 1
    page.close()
