// nanoseek chat: one page, no build step, no libraries.
//
// * Streams /v1/chat/completions (stream: true, stream_options.include_usage) with fetch and a
//   ReadableStream SSE parser; the stop button aborts the fetch (the server then aborts the
//   engine request).
// * DeepThink on = model "deepseek-reasoner" (reasoning_content deltas shown in a collapsible
//   block above the answer), off = "deepseek-chat".
// * Chats live in localStorage; the reasoning is kept for display but never sent back.
// * Per answer: completion tokens, tokens/s (completion tokens / streaming time: from the
//   response's first byte to its last chunk) and cost (usage x prices; the prices come from
//   /health when the server lists them, else DeepSeek's launch list prices, which are also the
//   server's defaults).
// * The markdown renderer below escapes all text before it adds its own tags, so model output
//   can never inject HTML; links keep only http(s), mailto and relative URLs.
"use strict";

(() => {
  const KEYS = {
    chats: "nanoseek.chats", current: "nanoseek.current", apiKey: "nanoseek.apiKey",
    maxTokens: "nanoseek.maxTokens", deepThink: "nanoseek.deepThink",
  };
  const REASONER = "deepseek-reasoner";
  const CHAT = "deepseek-chat";
  // USD per 1M tokens: prompt cache hit, prompt cache miss, output (R1 / V3 launch prices).
  const DEFAULT_PRICES = {
    [REASONER]: { cache_hit: 0.14, cache_miss: 0.55, output: 2.19 },
    [CHAT]: { cache_hit: 0.07, cache_miss: 0.27, output: 1.10 },
  };

  // ------------------------------------------------------------------------------ markdown
  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

  const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$/;
  const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const QUOTE = /^ {0,3}> ?(.*)$/;
  const LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])( +|$)(.*)$/;
  const LIST_START = /^ {0,3}([-*+]|\d{1,9}[.)]) +\S/;
  const TABLE_SEP = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
  // [label](url "title") and ![alt](url): one level of parentheses inside the url
  const LINK = /!?\[([^\[\]]*)\]\(\s*<?((?:[^\s()<>]|\([^\s()<>]*\))*)>?(?:\s+"[^"]*")?\s*\)/g;
  const ANGLE_URL = /<(https?:\/\/[^\s<>]+)>/g;
  const BARE_URL = /https?:\/\/[^\s<>"'`\u0000]+/g;

  const leadingSpaces = (line) => line.match(/^ */)[0].length;
  const isBlank = (line) => !line.trim();

  /** An href we are willing to emit: http(s), mailto or relative; null for anything else. */
  function safeUrl(url) {
    if (/[\u0000-\u0020\u007f-\u009f]/.test(url)) return null;
    const scheme = url.match(/^([a-z][a-z0-9+.-]*):/i);
    if (scheme && !/^(https?|mailto)$/i.test(scheme[1])) return null;
    return url;
  }

  /** A bare URL without the punctuation that ends its sentence (keeps balanced parentheses). */
  function trimUrl(url) {
    let end = url.length;
    for (;;) {
      const c = url[end - 1];
      const body = url.slice(0, end);
      const unbalanced = c === ")" && body.split("(").length < body.split(")").length;
      if (!".,;:!?]'".includes(c) && !unbalanced) return body;
      end -= 1;
    }
  }

  const anchor = (href, innerHtml) =>
    `<a href="${escapeHtml(href)}" target="_blank" rel="noopener noreferrer">${innerHtml}</a>`;

  /** Bold, italic, strike-through on already-escaped HTML text. */
  function renderEmphasis(html) {
    return html
      .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
      .replace(/\*(?=[^\s*])([\s\S]*?[^\s*])\*/g, "<em>$1</em>")
      .replace(/(^|[^\w])_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>")
      .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
  }

  /** Inline markdown of raw text → HTML. Finished pieces wait in numbered slots. */
  function renderInline(text) {
    const slots = [];
    const hold = (html) => `\u0000${slots.push(html) - 1}\u0000`;
    let s = String(text).replace(/\u0000/g, "");
    s = s.replace(/(`+)([\s\S]*?[^`])\1(?!`)/g, (_, ticks, code) =>
      hold(`<code>${escapeHtml(code.replace(/^ ([\s\S]*\S[\s\S]*) $/, "$1"))}</code>`));
    s = s.replace(/\\([\\`*_{}\[\]()#+\-.!~|>])/g, (_, c) => hold(escapeHtml(c)));
    s = s.replace(LINK, (_, label, url) => {
      const inner = renderEmphasis(escapeHtml(label));
      const href = safeUrl(url);
      return hold(href ? anchor(href, inner) : inner);
    });
    s = s.replace(ANGLE_URL, (_, url) => hold(anchor(url, escapeHtml(url))));
    s = s.replace(BARE_URL, (url) => {
      const href = trimUrl(url);
      return hold(anchor(href, escapeHtml(href))) + url.slice(href.length);
    });
    s = renderEmphasis(escapeHtml(s)).replace(/\n/g, "<br>");
    while (s.includes("\u0000")) s = s.replace(/\u0000(\d+)\u0000/g, (_, i) => slots[+i]);
    return s;
  }

  function codeBlock(lang, code) {
    const label = lang.replace(/[^\w+#.-]/g, "").slice(0, 24);
    const cls = label ? ` class="language-${escapeHtml(label)}"` : "";
    return '<div class="code-block"><div class="code-head">'
      + `<span class="code-lang">${escapeHtml(label || "text")}</span>`
      + '<button type="button" class="copy" aria-label="Copy code">Copy</button></div>'
      + `<pre><code${cls}>${escapeHtml(code)}</code></pre></div>`;
  }

  function isBlockStart(line) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line)
      || LIST_START.test(line);
  }

  /** A fenced code block starting at lines[i]: [html, next line index]. Unclosed runs to end. */
  function parseFence(lines, i) {
    const [, fence, lang] = lines[i].match(FENCE);
    const close = new RegExp(`^ {0,3}${fence[0] === "`" ? "`" : "~"}{${fence.length},}[ \\t]*$`);
    const body = [];
    let j = i + 1;
    while (j < lines.length && !close.test(lines[j])) body.push(lines[j++]);
    return [codeBlock(lang, body.join("\n")), j + 1];
  }

  /** A bullet or numbered list starting at lines[start]: [html, next line index]. */
  function parseList(lines, start) {
    const first = lines[start].match(LIST_ITEM);
    const indent = first[1].length;
    const ordered = /\d/.test(first[2]);
    const sameList = (m) => m && m[1].length <= indent + 1 && /\d/.test(m[2]) === ordered;
    const items = [];
    let i = start;
    let loose = false;
    while (i < lines.length) {
      const line = lines[i];
      const m = line.match(LIST_ITEM);
      const item = items[items.length - 1];
      if (sameList(m)) {
        items.push({ offset: m[1].length + m[2].length + Math.max(1, m[3].length), lines: [m[4]] });
        i++;
      } else if (isBlank(line)) {
        let j = i + 1;
        while (j < lines.length && isBlank(lines[j])) j++;
        if (j >= lines.length) break;
        if (!sameList(lines[j].match(LIST_ITEM)) && leadingSpaces(lines[j]) < item.offset) break;
        loose = true;
        item.lines.push("");
        i = j;
      } else if (leadingSpaces(line) > indent) {
        item.lines.push(line.slice(Math.min(leadingSpaces(line), item.offset)));
        i++;
      } else if (!isBlockStart(line)) {
        item.lines.push(line);  // a lazy continuation line
        i++;
      } else {
        break;
      }
    }
    const tag = ordered ? "ol" : "ul";
    const startNumber = ordered ? parseInt(first[2], 10) : 1;
    const open = ordered && startNumber !== 1 ? `<ol start="${startNumber}">` : `<${tag}>`;
    const body = items.map((it) => `<li>${renderBlocks(it.lines, !loose)}</li>`).join("");
    return [`${open}${body}</${tag}>`, i];
  }

  function splitRow(line) {
    return line.trim().replace(/^\|/, "").replace(/\|$/, "").split(/(?<!\\)\|/)
      .map((cell) => cell.trim().replace(/\\\|/g, "|"));
  }

  /** A pipe table whose header is lines[i] (lines[i + 1] is the separator). */
  function parseTable(lines, i) {
    const aligns = splitRow(lines[i + 1]).map((c) =>
      c.endsWith(":") ? (c.startsWith(":") ? "center" : "right") : c.startsWith(":") ? "left" : "");
    const cells = (row, tag) => splitRow(row).map((c, k) => {
      const align = aligns[k] ? ` style="text-align:${aligns[k]}"` : "";
      return `<${tag}${align}>${renderInline(c)}</${tag}>`;
    }).join("");
    let html = `<table><thead><tr>${cells(lines[i], "th")}</tr></thead><tbody>`;
    let j = i + 2;
    while (j < lines.length && !isBlank(lines[j]) && lines[j].includes("|")) {
      html += `<tr>${cells(lines[j++], "td")}</tr>`;
    }
    return [`${html}</tbody></table>`, j];
  }

  /** Block markdown of lines → HTML; ``tight``: paragraphs without <p> (list items). */
  function renderBlocks(lines, tight = false) {
    const out = [];
    let para = [];
    const flush = () => {
      if (!para.length) return;
      const html = renderInline(para.join("\n").trim());
      out.push(tight ? html : `<p>${html}</p>`);
      para = [];
    };
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      let block = null;
      if (FENCE.test(line)) {
        block = parseFence(lines, i);
      } else if (isBlank(line)) {
        flush();
        i++;
        continue;
      } else if ((m = line.match(HEADING))) {
        const level = m[1].length;
        block = [`<h${level}>${renderInline(m[2] || "")}</h${level}>`, i + 1];
      } else if (RULE.test(line)) {
        block = ["<hr>", i + 1];
      } else if (QUOTE.test(line)) {
        let j = i;
        const inner = [];
        while (j < lines.length && QUOTE.test(lines[j])) inner.push(lines[j++].match(QUOTE)[1]);
        block = [`<blockquote>${renderBlocks(inner)}</blockquote>`, j];
      } else if (LIST_START.test(line)) {
        block = parseList(lines, i);
      } else if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1])
                 && lines[i + 1].includes("-")) {
        block = parseTable(lines, i);
      }
      if (block) {
        flush();
        out.push(block[0]);
        i = block[1];
      } else {
        para.push(line);
        i++;
      }
    }
    flush();
    return out.join("");
  }

  /** Markdown text → safe HTML (all text escaped; only the renderer's own tags). */
  function renderMarkdown(text) {
    return renderBlocks(String(text).replace(/\r\n?/g, "\n").split("\n"));
  }

  // ------------------------------------------------------------------------------ storage
  function load(key, fallback) {
    try {
      const value = localStorage.getItem(key);
      return value === null ? fallback : JSON.parse(value);
    } catch {
      return fallback;
    }
  }

  function store(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch {
      /* storage full or disabled: the page keeps working without it */
    }
  }

  // ------------------------------------------------------------------------------ state
  const el = {};
  const state = {
    chats: [],          // [{id, title, updated, messages: [...]}], newest first
    current: null,      // the open chat; null = a new chat not saved yet
    busy: null,         // {controller} while a generation streams
    prices: { ...DEFAULT_PRICES },
    thinkingAvailable: true,
  };

  const saveChats = () => store(KEYS.chats, state.chats);
  const deepThink = () => el.deepthink.getAttribute("aria-pressed") === "true"
    && !el.deepthink.disabled;

  function apiHeaders() {
    const headers = { "Content-Type": "application/json" };
    const key = el.apiKey.value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  // ------------------------------------------------------------------------------ SSE
  /** The data fields of the server-sent events in a fetch body, one string per event. */
  async function* sseData(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split(/\r\n\r\n|\n\n|\r\r/);
      buffer = events.pop();
      for (const event of events) {
        const data = event.split(/\r\n|\n|\r/).filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (data) yield data;
      }
    }
  }

  async function errorText(response) {
    let message = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch { /* not JSON */ }
    if (response.status === 401) {
      el.settings.open = true;
      message += " (set the API key in Settings)";
    }
    return message;
  }

  // ------------------------------------------------------------------------------ numbers
  function cost(usage, model, thinking) {
    const price = state.prices[model] || state.prices[thinking ? REASONER : CHAT];
    if (!usage || !price) return null;
    const cached = usage.prompt_tokens_details ? usage.prompt_tokens_details.cached_tokens : 0;
    const hit = usage.prompt_cache_hit_tokens ?? cached ?? 0;
    const miss = usage.prompt_cache_miss_tokens ?? usage.prompt_tokens - hit;
    return (hit * price.cache_hit + miss * price.cache_miss
      + usage.completion_tokens * price.output) / 1e6;
  }

  const dollars = (x) => `$${x >= 0.01 ? x.toFixed(4) : x.toFixed(6)}`;

  /** The meta line's parts for a finished message. */
  function metaParts(msg) {
    const parts = [];
    const s = msg.stats || {};
    const tokens = msg.usage ? msg.usage.completion_tokens : s.chunks;
    if (tokens) parts.push(`${msg.usage ? "" : "≈"}${tokens} tokens`);
    if (tokens && s.streamSeconds > 0) {
      parts.push(`${(tokens / s.streamSeconds).toFixed(1)} tok/s`);
    }
    const usd = msg.usage ? cost(msg.usage, msg.model, msg.thinking) : null;
    if (usd !== null) parts.push(dollars(usd));
    return parts;
  }

  function metaTitle(msg) {
    const u = msg.usage;
    const s = msg.stats || {};
    const lines = [];
    if (u) {
      lines.push(`prompt ${u.prompt_tokens} tokens (cache hit ${u.prompt_cache_hit_tokens ?? 0})`);
      const reasoning = u.completion_tokens_details
        ? u.completion_tokens_details.reasoning_tokens : 0;
      lines.push(`output ${u.completion_tokens} tokens (reasoning ${reasoning})`);
    }
    if (s.firstTokenSeconds !== undefined) {
      lines.push(`first token after ${s.firstTokenSeconds.toFixed(2)} s`);
    }
    if (msg.finish) lines.push(`finish: ${msg.finish}`);
    lines.push(`model: ${msg.model}`);
    return lines.join("\n");
  }

  // ------------------------------------------------------------------------------ messages
  function logoSvg() {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 32 32");
    svg.setAttribute("class", "logo");
    svg.setAttribute("aria-hidden", "true");
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("width", "32");
    rect.setAttribute("height", "32");
    rect.setAttribute("rx", "8");
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", "M9 23V11h3l7 8v-8h4v12h-3l-7-8v8z");
    svg.append(rect, path);
    return svg;
  }

  function node(tag, className, text) {
    const n = document.createElement(tag);
    if (className) n.className = className;
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function userView(msg) {
    const article = node("article", "message user");
    article.setAttribute("aria-label", "You");
    article.append(node("div", "bubble", msg.content));
    return article;
  }

  /** An assistant message's element and an ``update()`` that redraws it from ``msg``. */
  function assistantView(msg) {
    const article = node("article", "message assistant");
    article.setAttribute("aria-label", "nanoseek");
    const body = node("div", "body");
    article.append(logoSvg(), body);
    let reasoning = null;
    let reasoningBody = null;
    let label = null;
    if (msg.thinking) {
      reasoning = node("details", "reasoning");
      reasoning.open = true;
      const summary = node("summary");
      label = node("span", "label");
      summary.append(label);
      reasoningBody = node("div", "reasoning-body");
      reasoning.append(summary, reasoningBody);
      body.append(reasoning);
    }
    const answer = node("div", "answer");
    const meta = node("div", "meta");
    body.append(answer, meta);
    let shown = null;

    function thoughtLabel() {
      if (msg.status === "streaming" && !msg.content) return "Thinking";
      if (msg.status === "stopped" && !msg.content) return "Thinking stopped";
      const seconds = msg.stats && msg.stats.thoughtSeconds;
      return seconds === undefined ? "Thought" : `Thought for ${seconds.toFixed(1)} seconds`;
    }

    function update() {
      article.dataset.status = msg.status;
      article.classList.toggle("streaming", msg.status === "streaming");
      article.classList.toggle("error", msg.status === "error");
      if (reasoning) {
        reasoning.hidden = msg.status === "error" && !msg.reasoning;
        label.textContent = thoughtLabel();
        if (reasoningBody.textContent !== msg.reasoning) reasoningBody.textContent = msg.reasoning;
      }
      const text = msg.status === "error" ? `Error: ${msg.error}` : msg.content;
      if (text !== shown) {
        if (msg.status === "error") answer.textContent = text;
        else answer.innerHTML = renderMarkdown(text);
        shown = text;
      }
      answer.classList.toggle("waiting", msg.status === "streaming" && !msg.content
        && !(msg.thinking && msg.reasoning));
      if (msg.status !== "streaming") drawMeta();
    }

    function drawMeta() {
      meta.replaceChildren();
      if (msg.status === "stopped") meta.append(node("span", "stopped", "Stopped"));
      for (const part of metaParts(msg)) meta.append(node("span", "stat", part));
      meta.title = metaTitle(msg);
      if (msg.content && msg.status !== "error") {
        const copy = node("button", "copy-answer", "Copy");
        copy.type = "button";
        copy.setAttribute("aria-label", "Copy answer");
        copy.addEventListener("click", () => copyText(msg.content, copy));
        meta.append(copy);
      }
    }

    update();
    return { element: article, update };
  }

  function copyText(text, button) {
    const done = () => {
      const before = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = before; }, 1200);
    };
    const fallback = () => {
      const area = node("textarea");
      area.value = text;
      document.body.append(area);
      area.select();
      try { document.execCommand("copy"); done(); } finally { area.remove(); }
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else {
      fallback();
    }
  }

  // ------------------------------------------------------------------------------ chats view
  function nearBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  const scrollToBottom = () => { el.messages.scrollTop = el.messages.scrollHeight; };

  function showChat(chat) {
    state.current = chat;
    store(KEYS.current, chat ? chat.id : null);
    el.messages.querySelectorAll(".message").forEach((n) => n.remove());
    el.welcome.hidden = Boolean(chat && chat.messages.length);
    for (const msg of chat ? chat.messages : []) {
      el.messages.append(msg.role === "user" ? userView(msg) : assistantView(msg).element);
    }
    el.title.textContent = chat ? chat.title : "New chat";
    document.title = chat ? `${chat.title} - nanoseek` : "nanoseek chat";
    renderChatList();
    scrollToBottom();
  }

  function renderChatList() {
    el.chatList.replaceChildren();
    for (const chat of state.chats) {
      const current = Boolean(state.current && chat.id === state.current.id);
      const li = node("li", current ? "current" : "");
      const open = node("button", "open-chat", chat.title);
      if (current) open.setAttribute("aria-current", "true");
      open.type = "button";
      open.title = chat.title;
      open.addEventListener("click", () => switchTo(chat));
      const del = node("button", "delete-chat");
      del.type = "button";
      del.setAttribute("aria-label", `Delete chat "${chat.title}"`);
      del.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M6 6l12 12M18 6L6 18"/></svg>';
      del.addEventListener("click", () => deleteChat(chat));
      li.append(open, del);
      el.chatList.append(li);
    }
  }

  function switchTo(chat) {
    stop();
    showChat(chat);
    closeSidebar();
    el.input.focus();
  }

  function deleteChat(chat) {
    if (!window.confirm(`Delete "${chat.title}"?`)) return;
    state.chats = state.chats.filter((c) => c !== chat);
    saveChats();
    if (state.current === chat) switchTo(null);
    else renderChatList();
  }

  // ------------------------------------------------------------------------------ sending
  /** The conversation as the API wants it: no reasoning, no failed or empty answers. */
  function apiMessages(messages) {
    return messages
      .filter((m) => m.role === "user" || (m.content && m.status !== "error"))
      .map((m) => ({ role: m.role, content: m.content }));
  }

  function newChat(text) {
    const title = text.trim().replace(/\s+/g, " ").slice(0, 48) || "New chat";
    const id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    const chat = { id, title, updated: Date.now(), messages: [] };
    state.chats.unshift(chat);
    return chat;
  }

  function requestBody(chat, msg) {
    const body = {
      model: msg.model, messages: apiMessages(chat.messages.slice(0, -1)), stream: true,
      stream_options: { include_usage: true },
    };
    const maxTokens = parseInt(el.maxTokens.value, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;
    return body;
  }

  async function send(text) {
    if (state.busy || !text.trim()) return;
    const thinking = deepThink();
    const chat = state.current || newChat(text);
    const msg = { role: "assistant", content: "", reasoning: "", thinking, status: "streaming",
                  model: thinking ? REASONER : CHAT };
    const question = { role: "user", content: text };
    chat.messages.push(question);
    chat.updated = Date.now();
    state.chats = [chat, ...state.chats.filter((c) => c !== chat)];
    if (state.current !== chat) {
      showChat(chat);
    } else {
      el.welcome.hidden = true;
      el.messages.append(userView(question));
      renderChatList();
    }
    chat.messages.push(msg);
    saveChats();
    const view = assistantView(msg);
    el.messages.append(view.element);
    scrollToBottom();
    const controller = new AbortController();
    state.busy = { controller };
    setBusy(true);
    try {
      await stream(chat, msg, view, controller.signal);
      msg.status = "done";
    } catch (error) {
      if (error.name === "AbortError") msg.status = "stopped";
      else Object.assign(msg, { status: "error", error: error.message || String(error) });
    } finally {
      state.busy = null;
      setBusy(false);
      const stick = nearBottom();
      view.update();
      if (stick) scrollToBottom();
      saveChats();
    }
  }

  /** Fetch and stream one answer into ``msg``, redrawing ``view`` at most every 30 ms. */
  async function stream(chat, msg, view, signal) {
    const t0 = performance.now();
    const stats = { chunks: 0 };
    msg.stats = stats;
    let pending = null;
    const redraw = () => {
      pending = null;
      const stick = nearBottom();
      view.update();
      if (stick) scrollToBottom();
    };
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: apiHeaders(), body: JSON.stringify(requestBody(chat, msg)), signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    const tStream = performance.now();
    let tLast = tStream;
    try {
      for await (const data of sseData(response.body)) {
        if (data === "[DONE]") break;
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message || "the server failed");
        if (event.usage) msg.usage = event.usage;
        const choice = event.choices && event.choices[0];
        if (!choice) continue;
        const delta = choice.delta || {};
        const now = performance.now();
        if (delta.reasoning_content) msg.reasoning += delta.reasoning_content;
        if (delta.content) {
          if (!msg.content && msg.thinking) stats.thoughtSeconds = (now - tStream) / 1000;
          msg.content += delta.content;
        }
        if (delta.reasoning_content || delta.content) {
          if (!stats.chunks) stats.firstTokenSeconds = (now - t0) / 1000;
          stats.chunks += 1;
          tLast = now;
        }
        if (choice.finish_reason) msg.finish = choice.finish_reason;
        if (!pending) pending = setTimeout(redraw, 30);
      }
    } finally {
      clearTimeout(pending);
      stats.streamSeconds = (tLast - tStream) / 1000;
      if (msg.thinking && stats.thoughtSeconds === undefined) {
        stats.thoughtSeconds = stats.streamSeconds;
      }
    }
  }

  function stop() {
    if (state.busy) state.busy.controller.abort();
  }

  function setBusy(busy) {
    el.send.hidden = busy;
    el.stop.hidden = !busy;
    el.messages.setAttribute("aria-busy", String(busy));
    updateSendButton();
    const focus = document.activeElement;
    if (!focus || focus === document.body || focus === el.send || focus === el.stop) {
      el.input.focus();  // keep typing while it answers (the hidden button lost the focus)
    }
  }

  const updateSendButton = () => { el.send.disabled = !el.input.value.trim() || !!state.busy; };

  function autosize() {
    el.input.style.height = "auto";
    el.input.style.height = `${el.input.scrollHeight}px`;
  }

  // ------------------------------------------------------------------------------ sidebar
  function openSidebar() {
    el.app.classList.add("sidebar-open");
    el.openSidebar.setAttribute("aria-expanded", "true");
    el.newChat.focus();
  }

  function closeSidebar() {
    if (!el.app.classList.contains("sidebar-open")) return;
    el.app.classList.remove("sidebar-open");
    el.openSidebar.setAttribute("aria-expanded", "false");
  }

  // ------------------------------------------------------------------------------ server info
  async function loadServerInfo() {
    try {
      const response = await fetch("health");
      const health = await response.json();
      if (health.prices && typeof health.prices === "object") {
        state.prices = { ...DEFAULT_PRICES, ...health.prices };
      }
      state.thinkingAvailable = health.thinking !== false;
      el.deepthink.disabled = !state.thinkingAvailable;
      if (!state.thinkingAvailable) {
        el.deepthink.title = "This server's model has no thinking mode";
      }
      el.serverInfo.textContent = `${health.model} · ${health.status === "ok" ? "ready" : health.status}`;
      el.serverInfo.classList.toggle("down", health.status !== "ok");
    } catch {
      el.serverInfo.textContent = "Server unreachable";
      el.serverInfo.classList.add("down");
    }
  }

  // ------------------------------------------------------------------------------ wiring
  function bind() {
    el.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = el.input.value;
      if (!text.trim() || state.busy) return;
      el.input.value = "";
      autosize();
      updateSendButton();
      send(text);
    });
    el.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        el.composer.requestSubmit();
      }
    });
    el.input.addEventListener("input", () => { autosize(); updateSendButton(); });
    el.stop.addEventListener("click", stop);
    el.deepthink.addEventListener("click", () => {
      const on = el.deepthink.getAttribute("aria-pressed") !== "true";
      el.deepthink.setAttribute("aria-pressed", String(on));
      store(KEYS.deepThink, on);
    });
    for (const button of [el.newChat, el.newChatTop]) {
      button.addEventListener("click", () => switchTo(null));
    }
    el.apiKey.addEventListener("change", () => store(KEYS.apiKey, el.apiKey.value.trim()));
    el.maxTokens.addEventListener("change", () => store(KEYS.maxTokens, el.maxTokens.value));
    el.openSidebar.addEventListener("click", openSidebar);
    el.closeSidebar.addEventListener("click", closeSidebar);
    el.scrim.addEventListener("click", closeSidebar);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") closeSidebar();
    });
    el.messages.addEventListener("click", (event) => {
      const button = event.target.closest(".code-block .copy");
      if (button) copyText(button.closest(".code-block").querySelector("code").textContent, button);
    });
  }

  function init() {
    const ids = {
      app: ".app", sidebar: "#sidebar", scrim: "#scrim", chatList: "#chat-list",
      newChat: "#new-chat", newChatTop: "#new-chat-top", settings: ".settings",
      apiKey: "#api-key", maxTokens: "#max-tokens", serverInfo: "#server-info",
      openSidebar: "#open-sidebar", closeSidebar: "#close-sidebar", title: "#chat-title",
      messages: "#messages", welcome: "#welcome", composer: "#composer", input: "#input",
      deepthink: "#deepthink", send: "#send", stop: "#stop",
    };
    for (const [name, selector] of Object.entries(ids)) el[name] = document.querySelector(selector);
    el.apiKey.value = load(KEYS.apiKey, "");
    el.maxTokens.value = load(KEYS.maxTokens, "");
    el.deepthink.setAttribute("aria-pressed", String(load(KEYS.deepThink, true) !== false));
    const chats = load(KEYS.chats, []);
    state.chats = Array.isArray(chats) ? chats.filter((c) => c && Array.isArray(c.messages)) : [];
    for (const msg of state.chats.flatMap((c) => c.messages)) {
      if (msg.status === "streaming") msg.status = "stopped";  // the page closed mid-answer
    }
    bind();
    const currentId = load(KEYS.current, null);
    showChat(state.chats.find((c) => c.id === currentId) || null);
    loadServerInfo();
    el.input.focus();
  }

  window.nanoseek = { renderMarkdown, escapeHtml, state };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
