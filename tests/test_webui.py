"""The web chat page (``nanoseek/serve/static``) in a real headless Chromium, driven by Selenium.

One server (the tiny random model from ``test_serve``, started with an API key) and one browser
serve the whole module. The random model is steered by hooks (``Steering``): ``</think>`` gets
a fixed probability after the first tokens (so a thought starts, ends and an answer follows),
EOS never comes (answers end at the page's max-tokens setting), and each step sleeps a little (so
streaming is visible and a long answer can be stopped). The tests check the DOM, never the text.

Skipped when Debian's ``chromium`` / ``chromedriver`` or the ``selenium`` package is missing.
Screenshots land in pytest's temporary directory (``webui*/``).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from test_serve import NAME, make_engine, model_dir, raw, serving

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the suite stays green without the browser stack
    webdriver = None

__all__ = ["model_dir"]  # the session fixture, re-exported for pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    webdriver is None or not CHROMIUM or not CHROMEDRIVER,
    reason="needs selenium (pip) and Debian's chromium + chromium-driver "
           "(apt-get install -y chromium chromium-driver)")

KEY = "sk-webui"
MAX_TOKENS = 24
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1280,860")


# ------------------------------------------------------------------------------ fixtures
@dataclass
class Steering:
    """Hooks steering a random model: no EOS, ``delay_s`` per step, ``P(</think>) = think_p``
    except for the first ``min_thought`` tokens after a prefill (embedding input ``T > 1``).
    Counting steps is right because the tests run one request at a time."""

    think_end_id: int
    eos_ids: list[int]
    think_p: float = 0.3
    delay_s: float = 0.02
    min_thought: int = 3
    step: int = 0

    def install(self, model: torch.nn.Module) -> None:
        model.model.embed_tokens.register_forward_pre_hook(self.see_input)
        model.lm_head.register_forward_hook(self.steer)

    def see_input(self, module: Any, inputs: tuple[torch.Tensor]) -> None:
        prefill = inputs[0].shape[-1] > 1  # ids [1, sum of chunk lengths] or decode's [B, 1]
        self.step = 0 if prefill else self.step + 1

    def steer(self, module: Any, inputs: Any, logits_NV: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        logits_NV = logits_NV.clone()
        logits_NV[..., self.eos_ids] = float("-inf")
        logits_NV[..., self.think_end_id] = float("-inf")
        if self.think_p > 0 and self.step >= self.min_thought:  # think_p at temperature 1
            others = torch.logsumexp(logits_NV, dim=-1)
            logits_NV[..., self.think_end_id] = others + math.log(self.think_p / (1 - self.think_p))
        return logits_NV


@dataclass
class Web:
    base: str
    server: Any
    engine: Any
    steering: Steering
    shots: Path


@pytest.fixture(scope="module")
def web(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    engine, tokenizer = make_engine(model_dir, num_blocks=128)
    steering = Steering(tokenizer.think_end_id, list(engine.eos_token_ids))
    steering.install(engine.model)
    with serving(engine, tokenizer, api_keys=[KEY]) as (base, server):
        yield Web(base, server, engine, steering, tmp_path_factory.mktemp("webui"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(web: Web, browser: Any) -> Any:
    """The chat page, fresh: empty storage, the API key and max tokens set, steering reset."""
    web.steering.think_p, web.steering.delay_s = 0.3, 0.02
    browser.set_window_size(1280, 860)
    return open_page(browser, web.base, {"nanoseek.apiKey": KEY,
                                         "nanoseek.maxTokens": str(MAX_TOKENS)})


# ------------------------------------------------------------------------------ helpers
def open_page(driver: Any, base: str, storage: dict[str, Any]) -> Any:
    """Load the page with exactly ``storage`` in localStorage; wait until it is ready."""
    driver.get(base + "/")
    driver.execute_script("localStorage.clear();"
                          "for (const [k, v] of Object.entries(arguments[0]))"
                          "  localStorage.setItem(k, JSON.stringify(v));", storage)
    driver.refresh()
    until(driver, lambda d: "ready" in d.find_element(By.ID, "server-info").text)
    driver.execute_script(  # record every request body the page sends
        "window.sent = []; const f = window.fetch;"
        "window.fetch = (url, o) => { if (o && o.body) window.sent.push(JSON.parse(o.body));"
        "  return f(url, o); };")
    return driver


def until(driver: Any, condition: Any, timeout: float = 20) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(condition)


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


LAST = "const all = document.querySelectorAll('.message.assistant'); const m = all[all.length - 1];"
SNAPSHOT = LAST + """
    if (!m) return null;
    const r = m.querySelector('details.reasoning');
    return {status: m.dataset.status, reasoning: r ? r.querySelector('.reasoning-body')
            .textContent.length : -1, answer: m.querySelector('.answer').textContent.length,
            meta: m.querySelector('.meta').textContent};"""


def send(driver: Any, text: str) -> None:
    box = driver.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def watch_answer(driver: Any, timeout: float = 20) -> tuple[dict, list[dict]]:
    """Poll the last answer until it finishes: (final snapshot, snapshots while streaming)."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = js(driver, SNAPSHOT)
        if snap and snap["status"] != "streaming":
            return snap, seen
        if snap and (not seen or seen[-1] != snap):
            seen.append(snap)
        time.sleep(0.01)
    raise AssertionError(f"the answer did not finish; last: {seen[-1:]}")


def health(base: str) -> dict[str, Any]:
    return json.loads(raw(base, "GET", "/health")[2])


# ------------------------------------------------------------------------------ tests
def test_page_loads_with_its_assets(page: Any, web: Web) -> None:
    assert page.title == "nanoseek chat"
    assert page.find_element(By.ID, "server-info").text == f"{NAME} · ready"
    think = page.find_element(By.ID, "deepthink")
    assert think.get_attribute("aria-pressed") == "true" and think.is_enabled()
    assert page.find_element(By.ID, "welcome").is_displayed()
    assert not page.find_element(By.ID, "send").is_enabled()  # nothing typed yet
    assert not page.find_element(By.ID, "stop").is_displayed()
    radius = js(page, "return getComputedStyle(document.querySelector('.composer')).borderRadius")
    assert radius == "24px"  # style.css came from /static
    errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    page.save_screenshot(str(web.shots / "empty.png"))


def test_deepthink_streams_reasoning_then_answer(page: Any, web: Web) -> None:
    send(page, "Hello there")
    final, streaming = watch_answer(page)
    assert final["status"] == "done", final
    assert len(streaming) >= 2 and any(s["reasoning"] > 0 for s in streaming)  # grew live
    message = page.find_elements(By.CSS_SELECTOR, ".message.assistant")[-1]
    details = message.find_element(By.CSS_SELECTOR, "details.reasoning")
    summary = details.find_element(By.TAG_NAME, "summary")
    assert summary.text.startswith("Thought for") and details.get_attribute("open") is not None
    assert final["answer"] > 0  # the steered model closed its thought and answered
    page.save_screenshot(str(web.shots / "deepthink.png"))
    summary.click()  # collapsible
    assert details.get_attribute("open") is None
    summary.click()
    # per-message tokens, tokens/s and cost = usage x the server's default R1 prices
    msg = js(page, "return window.nanoseek.state.current.messages[1]")
    usage = msg["usage"]
    assert msg["model"] == "deepseek-reasoner" and usage["completion_tokens"] == MAX_TOKENS
    cost = (usage["prompt_cache_hit_tokens"] * 0.14 + usage["prompt_cache_miss_tokens"] * 0.55
            + usage["completion_tokens"] * 2.19) / 1e6
    assert f"{MAX_TOKENS} tokens" in final["meta"] and "tok/s" in final["meta"]
    assert f"${cost:.6f}" in final["meta"]
    # the second turn sends the answer back without its reasoning
    send(page, "And then?")
    assert watch_answer(page)[0]["status"] == "done"
    body = js(page, "return window.sent[window.sent.length - 1]")
    assert body["model"] == "deepseek-reasoner" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True} and body["max_tokens"] == MAX_TOKENS
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1] == {"role": "assistant", "content": msg["content"]}
    stored = json.loads(js(page, "return localStorage.getItem('nanoseek.chats')"))
    assert len(stored) == 1 and len(stored[0]["messages"]) == 4
    assert len(page.find_elements(By.CSS_SELECTOR, "#chat-list [aria-current='true']")) == 1


def test_chat_mode_has_no_reasoning_block(page: Any, web: Web) -> None:
    think = page.find_element(By.ID, "deepthink")
    think.click()
    assert think.get_attribute("aria-pressed") == "false"
    send(page, "Just answer")
    final, _ = watch_answer(page)
    assert final["status"] == "done" and final["reasoning"] == -1  # no reasoning block
    assert not page.find_elements(By.CSS_SELECTOR, ".message details.reasoning")
    assert "tok/s" in final["meta"] and "$" in final["meta"]
    assert js(page, "return window.sent[0].model") == "deepseek-chat"
    assert js(page, "return localStorage.getItem('nanoseek.deepThink')") == "false"


def test_stop_aborts_the_generation(page: Any, web: Web) -> None:
    web.steering.think_p, web.steering.delay_s = 0.0, 0.05  # thinks until the context is full
    js(page, "document.getElementById('max-tokens').value = ''")
    send(page, "Think for a long time")
    until(page, lambda d: (js(d, SNAPSHOT) or {}).get("reasoning", 0) > 0)
    assert health(web.base)["inflight"] == 1
    stop = page.find_element(By.ID, "stop")
    assert stop.is_displayed() and not page.find_element(By.ID, "send").is_displayed()
    page.save_screenshot(str(web.shots / "streaming.png"))
    clicked = time.monotonic()
    stop.click()
    until(page, lambda d: js(d, SNAPSHOT)["status"] == "stopped", timeout=5)
    snap = js(page, SNAPSHOT)
    assert snap["meta"].startswith("Stopped") and "tokens" in snap["meta"]
    assert page.find_element(By.ID, "send").is_displayed() and not stop.is_displayed()
    assert "stopped" in page.find_element(By.CSS_SELECTOR, ".reasoning summary").text
    worker = web.server.config.app.state.server.worker
    while worker.num_inflight or web.engine.has_unfinished():
        assert time.monotonic() - clicked < 5, "the server kept generating"  # full: ~8 s
        time.sleep(0.02)
    assert health(web.base)["inflight"] == 0
    page.save_screenshot(str(web.shots / "stopped.png"))


def test_new_chat_clears_and_chats_persist(page: Any, web: Web) -> None:
    send(page, "First chat")
    assert watch_answer(page)[0]["status"] == "done"
    assert page.find_element(By.ID, "chat-title").text == "First chat"
    page.find_element(By.ID, "new-chat").click()
    assert not page.find_elements(By.CSS_SELECTOR, ".message")
    assert page.find_element(By.ID, "welcome").is_displayed()
    assert page.find_element(By.ID, "chat-title").text == "New chat"
    items = page.find_elements(By.CSS_SELECTOR, "#chat-list .open-chat")
    assert len(items) == 1 and items[0].get_attribute("aria-current") is None
    page.refresh()  # chats survive a reload; the open chat too
    until(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#chat-list .open-chat"))
    page.find_element(By.CSS_SELECTOR, "#chat-list .open-chat").click()
    assert len(page.find_elements(By.CSS_SELECTOR, ".message")) == 2
    page.refresh()
    until(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".message")) == 2)


MARKDOWN = """# Title

Some **bold**, *italic*, `a < b` and a [link](https://example.com/?a=1&b=2).
Evil [click](javascript:window.xss=3) and <script>window.xss=1</script>
<img src=x onerror="window.xss=2"> ~~gone~~ https://nanoseek.dev/docs.

- one
- two with `code`
  1. nested

```python
def f(x):
    return "<b>" if x < 1 else x
```

| a | b |
|---|--:|
| 1 | 2 |
"""


NASTY = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "[a](javascript:alert(1))",
         "[a](JaVaScRiPt:alert(1))", "[a](vbscript:x)", "[a](data:text/html,<script>)",
         "[a](\"onmouseover=alert(1)\")", "[a](https://x.com\" onclick=\"alert(1))",
         "![a](javascript:alert(1))", "<https://x.com/\"onmouseover=\"alert(1)>",
         "```\"><img src=x onerror=alert(1)>\nx\n```", "| <b> | `<i>` |\n|---|---|\n| 1 | 2 |",
         "**<svg onload=alert(1)>**", "`</code><script>`", "- <iframe src=x>\n  > <style>",
         "# <a href=x>h</a>", "https://x.com/<script>", "[x](//evil.com) [y](#top) [z](/a?b=1&c)"]
ALLOWED = r"""
    const tags = new Set(['P', 'BR', 'STRONG', 'EM', 'DEL', 'CODE', 'PRE', 'A', 'UL', 'OL', 'LI',
      'H1', 'H2', 'H3', 'H4', 'H5', 'H6', 'HR', 'BLOCKQUOTE', 'TABLE', 'THEAD', 'TBODY', 'TR',
      'TH', 'TD', 'DIV', 'SPAN', 'BUTTON']);
    const attrs = new Set(['href', 'target', 'rel', 'class', 'type', 'aria-label', 'start',
                           'style']);
    const bad = [];
    for (const text of arguments[0]) {
      const doc = document.implementation.createHTMLDocument('');  // inert: nothing runs
      doc.body.innerHTML = window.nanoseek.renderMarkdown(text);
      for (const n of doc.body.querySelectorAll('*')) {
        if (!tags.has(n.tagName)) bad.push([text, n.tagName]);
        for (const a of n.attributes) {
          if (!attrs.has(a.name)) bad.push([text, a.name]);
          if (a.name === 'href' && /^\s*[a-z][a-z0-9+.-]*:/i.test(a.value)
              && !/^(https?|mailto):/i.test(a.value)) bad.push([text, a.value]);
          if (a.name === 'style' && !/^text-align:(left|right|center)$/.test(a.value))
            bad.push([text, a.value]);
        }
      }
    }
    return bad;"""


def test_markdown_renders_safely(web: Web, browser: Any) -> None:
    chat = {"id": "md", "title": "Markdown", "updated": 0, "messages": [
        {"role": "user", "content": "<img src=x onerror=\"window.xss=4\"> hi"},
        {"role": "assistant", "content": MARKDOWN, "reasoning": "<b>plain</b> text",
         "thinking": True, "status": "done", "model": "deepseek-reasoner"}]}
    page = open_page(browser, web.base, {"nanoseek.chats": [chat], "nanoseek.current": "md"})
    answer = page.find_element(By.CSS_SELECTOR, ".message.assistant .answer")
    assert answer.find_element(By.TAG_NAME, "h1").text == "Title"
    assert answer.find_element(By.TAG_NAME, "strong").text == "bold"
    assert answer.find_element(By.TAG_NAME, "em").text == "italic"
    assert answer.find_element(By.TAG_NAME, "del").text == "gone"
    assert answer.find_element(By.CSS_SELECTOR, "p > code").text == "a < b"
    hrefs = [a.get_attribute("href") for a in answer.find_elements(By.TAG_NAME, "a")]
    assert hrefs == ["https://example.com/?a=1&b=2", "https://nanoseek.dev/docs"]
    assert [li.text.split("\n")[0] for li in answer.find_elements(By.CSS_SELECTOR, "ul > li")
            ] == ["one", "two with code"]
    assert answer.find_element(By.CSS_SELECTOR, "ul ol > li").text == "nested"
    block = answer.find_element(By.CSS_SELECTOR, ".code-block")
    assert block.find_element(By.CSS_SELECTOR, ".code-lang").text == "python"
    code = block.find_element(By.CSS_SELECTOR, "pre > code.language-python")
    assert code.get_attribute("textContent") == 'def f(x):\n    return "<b>" if x < 1 else x'
    assert [c.text for c in answer.find_elements(By.CSS_SELECTOR, "td")] == ["1", "2"]
    assert "<script>window.xss=1</script>" in answer.text and "click" in answer.text
    messages = page.find_element(By.ID, "messages")
    assert not messages.find_elements(By.CSS_SELECTOR, "script, img, b, [onerror]")
    assert js(page, "return window.xss") is None
    assert page.find_element(By.CSS_SELECTOR, ".reasoning-body").text == "<b>plain</b> text"
    copy = block.find_element(By.CSS_SELECTOR, "button.copy")
    copy.click()
    until(page, lambda d: copy.text == "Copied", timeout=3)
    page.save_screenshot(str(web.shots / "markdown.png"))
    render = "return window.nanoseek.renderMarkdown(arguments[0])"
    assert js(page, render, "a\u0000<i>") == "<p>a&lt;i&gt;</p>"
    assert "href" not in js(page, render, "[x](\u0001javascript:alert(1))")
    assert "href" not in js(page, render, "[x](\u0001javascript:void)")
    unclosed = js(page, render, "```\nstreaming <x>")  # a fence still streaming: code so far
    assert unclosed.endswith("<code>streaming &lt;x&gt;</code></pre></div>")
    assert js(page, ALLOWED, NASTY) == []  # only the renderer's own tags and safe attributes
    assert js(page, "return window.xss") is None


def test_api_key_is_asked_for_and_kept(web: Web, browser: Any) -> None:
    page = open_page(browser, web.base, {"nanoseek.maxTokens": "4"})
    send(page, "Who am I?")
    final, _ = watch_answer(page)
    assert final["status"] == "error" and "API key" in final["meta"] + js(
        page, LAST + "return m.querySelector('.answer').textContent")
    assert page.find_element(By.CSS_SELECTOR, "details.settings").get_attribute("open")
    field_ = page.find_element(By.ID, "api-key")
    field_.send_keys(KEY, Keys.TAB)  # "change" stores it
    assert js(page, "return localStorage.getItem('nanoseek.apiKey')") == json.dumps(KEY)
    send(page, "Now?")
    assert watch_answer(page)[0]["status"] == "done"
    body = js(page, "return window.sent[window.sent.length - 1]")
    assert [m["role"] for m in body["messages"]] == ["user", "user"]  # the failure is not sent


def test_mobile_width(page: Any, web: Web) -> None:
    send(page, "On a phone")
    assert watch_answer(page)[0]["status"] == "done"
    page.set_window_size(390, 844)
    sidebar = page.find_element(By.ID, "sidebar")
    until(page, lambda d: sidebar.rect["x"] + sidebar.rect["width"] <= 0)  # off screen
    width = js(page, "return document.documentElement.scrollWidth")
    assert width <= js(page, "return window.innerWidth")  # no sideways scrolling
    page.save_screenshot(str(web.shots / "mobile.png"))
    page.find_element(By.ID, "open-sidebar").click()
    until(page, lambda d: sidebar.rect["x"] >= 0)
    page.save_screenshot(str(web.shots / "mobile-sidebar.png"))
    page.find_element(By.ID, "close-sidebar").click()
    until(page, lambda d: sidebar.rect["x"] + sidebar.rect["width"] <= 0)
