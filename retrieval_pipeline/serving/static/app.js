// qwen3-vl-rag search page: plain DOM, text-only rendering (corpus text and file names are untrusted: they are
// only ever assigned to textContent / attributes, never parsed as HTML). With a token, it is asked for once and
// sent in the Authorization header; media are fetched with it into blob URLs (never a token in a URL).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("qwen3vl-rag-token") || "", image: null, blobs: [], hits: [], query: "" };

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function headers(json = true) {
  const out = {};
  if (json) out["Content-Type"] = "application/json";
  if (state.token) out["Authorization"] = "Bearer " + state.token;
  return out;
}

class ApiError extends Error {}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
    if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (e) { /* not JSON */ }
  return response.status + " " + response.statusText;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(options.body !== undefined), ...(options.headers || {}) } });
  if (response.status === 401) {
    askToken();
    throw new ApiError("this server needs its access token: enter it above");
  }
  if (!response.ok) throw new ApiError(await errorText(response));
  return response;
}

function askToken() {
  $("token-form").hidden = false;
  $("token").focus();
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) { $("status").textContent = text; }

function filters() {
  const all = [...document.querySelectorAll("input[name=modality]")];
  const chosen = all.filter((c) => c.checked).map((c) => c.value);
  return chosen.length === all.length ? undefined : { modality: chosen };
}

function anyKind() { return document.querySelectorAll("input[name=modality]:checked").length > 0; }

function queryItem() {
  const text = $("query").value.trim();
  if (state.image && text) return { text, image: state.image.data };
  if (state.image) return { image: state.image.data };
  return text;
}

function releaseBlobs() {
  for (const url of state.blobs) URL.revokeObjectURL(url);
  state.blobs = [];
}

function collection() {
  return $("collection").value.trim();
}

function itemPath(id, suffix = "", query = {}) {
  // an item of the chosen collection (a name or a vector-store id): ?collection= on every item call
  const params = new URLSearchParams(query);
  if (collection()) params.set("collection", collection());
  const text = params.toString();
  return "/v1/items/" + encodeURIComponent(id) + suffix + (text ? "?" + text : "");
}

async function blobUrl(path) {
  const response = await api(path);
  const url = URL.createObjectURL(await response.blob());
  state.blobs.push(url);
  return { url, placeholder: response.headers.get("X-Placeholder") };
}

function seconds(value) {
  const s = Math.max(0, Math.round(Number(value) || 0));
  return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
}

function describe(hit) {
  // source#member for an item inside its file (a mail's attachment, an archive's entry), then where in it
  const name = ((hit.source || "").split(/[\\/]/).pop() || hit.id) + (hit.member ? "#" + hit.member : "");
  if (hit.modality === "pdf-page") return name + (hit.sheet ? " \u00b7 sheet " + hit.sheet : "") + " \u00b7 page " + hit.page;
  if (hit.modality === "video" && hit.segment) return name + " \u00b7 " + seconds(hit.segment[0]) + "\u2013" + seconds(hit.segment[1]);
  if (hit.modality === "text" && hit.chunk !== null && hit.chunk !== undefined) return name + " \u00b7 chunk " + hit.chunk;
  return name;
}

function boxes(highlights) {
  // the query's words on a page: [{term, boxes: [[x0, y0, x1, y1], ...]}] page-relative (0..1, origin top-left),
  // drawn over the page's image in percentages (positions set through the CSSOM, which the page's CSP allows)
  const out = [];
  for (const h of highlights || []) {
    for (const b of h.boxes || []) {
      const [x0, y0, x1, y1] = b.map((v) => Math.min(1, Math.max(0, Number(v) || 0)));
      if (!(x1 > x0 && y1 > y0)) continue;
      const box = el("span", { class: "hl", title: String(h.term), "aria-hidden": "true" });
      box.style.left = x0 * 100 + "%";
      box.style.top = y0 * 100 + "%";
      box.style.width = (x1 - x0) * 100 + "%";
      box.style.height = (y1 - y0) * 100 + "%";
      out.push(box);
    }
  }
  return out;
}

function marked(img, highlights) {
  // the image in a frame its own size, with the boxes over it (they scale with the image)
  const frame = el("span", { class: "marks" }, [img, ...boxes(highlights)]);
  const n = frame.childElementCount - 1;
  if (n) frame.dataset.boxes = String(n);
  return frame;
}

const STOPWORDS = new Set(("a an and are as at be by for from has have in is it its of on or that the this to was were what " +
  "when where which who why will with how do does did can could should would about into than then there these those").split(" "));

function terms(query) {
  // the query's words worth marking (as the server picks them: no stopwords), longest first
  const words = (query || "").toLowerCase().match(/[\p{L}\p{N}_][\p{L}\p{N}_\-./]*[\p{L}\p{N}_]|[\p{L}\p{N}_]/gu) || [];
  return [...new Set(words)].filter((w) => !STOPWORDS.has(w) && (w.length > 1 || /\d/.test(w))).sort((a, b) => b.length - a.length);
}

function snippet(hit) {
  // the part of the text around the query's words, as text with the words in <mark> (never parsed as HTML); a
  // chunk's card shows its text from the start already, so a snippet that is just that start is left out
  const text = (hit.snippet || "").trim();
  if (!text) return null;
  if (hit.modality === "text" || hit.modality === "mixed") {
    const flat = (hit.text || "").split(/\s+/).join(" ").trim();
    if (flat.startsWith(text.replace(/ \u2026$/, ""))) return null;
  }
  const words = terms(state.query);
  const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const parts = escaped.length ? text.split(new RegExp("(" + escaped.join("|") + ")", "iu")) : [text];
  const nodes = parts.filter((p) => p).map((p) => (words.includes(p.toLowerCase()) ? el("mark", { text: p }) : document.createTextNode(p)));
  return el("div", { class: "snippet" }, nodes);
}

function card(hit, position) {
  const fig = el("article", { class: "card", tabindex: "0", id: "card-" + position, "data-id": hit.id, "aria-label": "result " + position });
  let visual;
  if (hit.modality === "text" || hit.modality === "mixed") {
    visual = el("div", { class: "chunk", text: hit.text || "" });
  } else {
    const img = el("img", { class: "thumb", alt: hit.modality + " " + describe(hit) });
    const frame = hit.modality === "pdf-page" ? marked(img, hit.highlights) : null;
    visual = frame ? el("div", { class: "thumb-frame" }, [frame]) : img;
    blobUrl(itemPath(hit.id, "/thumbnail"))
      .then(({ url, placeholder }) => {
        img.src = url;
        if (placeholder) img.title = placeholder;
        if (placeholder && frame) frame.querySelectorAll(".hl").forEach((b) => b.remove());  // not the page
      })
      .catch((e) => { img.alt = "thumbnail unavailable: " + e.message; });
  }
  const before = hit.stage_one_rank || hit.rank;
  const scores = "vector " + Number(hit.vector_score).toFixed(4) +
    (hit.rerank_score === null || hit.rerank_score === undefined ? "" : " \u00b7 rerank " + Number(hit.rerank_score).toFixed(4));
  const meta = el("div", { class: "meta" }, [
    el("div", {}, [el("span", { class: "badge", text: "#" + position }), el("span", { class: "badge", text: hit.modality || "" }),
      el("span", { class: "rank", text: hit.rerank_score === null || hit.rerank_score === undefined ? "rank " + hit.rank : "rank " + before + " \u2192 " + hit.rank })]),
    el("div", { class: "source", text: describe(hit) }),
    el("div", { class: "scores", text: scores }),
  ]);
  const snip = snippet(hit);
  if (snip) meta.append(snip);
  fig.append(visual, meta);
  fig.addEventListener("click", () => openItem(hit));
  fig.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openItem(hit); } });
  return fig;
}

function render(hits) {
  releaseBlobs();
  state.hits = hits;
  const grid = $("results");
  grid.replaceChildren(...hits.map((h, i) => card(h, i + 1)));
  setStatus(hits.length ? hits.length + " results" : "nothing found");
}

async function openItem(hit) {
  const dialog = $("viewer");
  const body = $("viewer-body");
  $("viewer-title").textContent = describe(hit);
  body.replaceChildren(el("p", { class: "muted", text: "loading\u2026" }));
  if (!dialog.open) dialog.showModal();
  try {
    const path = itemPath(hit.id, "/media");
    if (hit.modality === "text" || hit.modality === "mixed") {
      const text = await (await api(path)).text();
      body.replaceChildren(el("pre", { text }));
    } else if (hit.modality === "video") {
      const { url } = await blobUrl(path);
      const video = el("video", { controls: "", preload: "metadata" });
      video.src = url;
      const start = hit.segment ? Number(hit.segment[0]) : 0;
      video.addEventListener("loadedmetadata", () => { video.currentTime = start; });
      body.replaceChildren(video, el("p", { class: "muted", text: "segment " + seconds(start) + "\u2013" + seconds(hit.segment ? hit.segment[1] : 0) }));
    } else {
      const { url, placeholder } = await blobUrl(path);
      const img = el("img", { alt: describe(hit) });
      img.src = url;
      if (hit.modality === "pdf-page" && !placeholder) {
        body.replaceChildren(marked(img, await pageHighlights(hit)));
      } else {
        body.replaceChildren(img);
      }
      if (placeholder) body.append(el("p", { class: "muted", text: placeholder }));
    }
  } catch (e) {
    body.replaceChildren(el("p", { class: "error", text: e.message }));
  }
}

async function pageHighlights(hit) {
  // the hit's own boxes, else the item's for the query the results are for (none when that cannot be had)
  if (Array.isArray(hit.highlights)) return hit.highlights;
  if (!state.query) return [];
  try {
    const item = await (await api(itemPath(hit.id, "", { q: state.query }))).json();
    return item.highlights || [];
  } catch (e) {
    return [];
  }
}

async function search(event) {
  if (event) event.preventDefault();
  showError("");
  const query = queryItem();
  if (!query) { showError("type a query or add an image"); return; }
  if (!anyKind()) { showError("tick at least one kind of item to search"); return; }
  setStatus("searching\u2026");
  state.query = $("query").value.trim();
  const body = { query, top_k: Number($("top-k").value) || 8, rerank: $("rerank").checked };
  if (collection()) body.collection = collection();
  const f = filters();
  if (f) body.filters = f;
  try {
    const response = await api("/v1/search", { method: "POST", body: JSON.stringify(body) });
    render((await response.json()).results);
  } catch (e) {
    setStatus("");
    showError(e.message);
  }
}

function citedText(target, text) {
  // "[n]" becomes a link to card n; everything else stays text
  const parts = text.split(/(\[\d+\])/);
  const nodes = parts.filter((p) => p).map((part) => {
    const m = /^\[(\d+)\]$/.exec(part);
    if (!m || !document.getElementById("card-" + m[1])) return document.createTextNode(part);
    const link = el("a", { href: "#card-" + m[1], class: "cite", text: part });
    link.addEventListener("click", (e) => {
      e.preventDefault();
      const c = $("card-" + m[1]);
      document.querySelectorAll(".card.cited").forEach((x) => x.classList.remove("cited"));
      c.classList.add("cited");
      c.scrollIntoView({ block: "nearest" });
      c.focus();
    });
    return link;
  });
  target.replaceChildren(...nodes);
}

async function ask() {
  showError("");
  const text = $("query").value.trim();
  if (!text) { showError("type a question to ask"); return; }
  if (!anyKind()) { showError("tick at least one kind of item to search"); return; }
  state.query = text;
  const content = state.image ? [{ type: "text", text }, { type: "image_url", image_url: { url: state.image.data } }] : text;
  const body = {
    stream: true, messages: [{ role: "user", content }],
    retrieval: { top_k: Math.min(20, Number($("top-k").value) || 3), rerank: $("rerank").checked },
  };
  if (collection()) body.retrieval.collection = collection();
  const f = filters();
  if (f) body.retrieval.filters = f;
  const panel = $("answer-panel");
  const out = $("answer");
  panel.hidden = false;
  out.textContent = "";
  $("answer-status").textContent = "generating\u2026";
  panel.dataset.done = "false";
  let answer = "";
  try {
    const response = await api("/v1/chat/completions", { method: "POST", body: JSON.stringify(body) });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new ApiError(chunk.error.message || "generation failed");
          if (chunk.sources) render(chunk.sources);
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) { answer += delta.content; citedText(out, answer); }
        }
      }
    }
    $("answer-status").textContent = "done";
  } catch (e) {
    $("answer-status").textContent = "";
    showError(e.message);
  } finally {
    panel.dataset.done = "true";
  }
}

function takeImage(file) {
  if (!file || !file.type.startsWith("image/")) { showError("only image files can be part of a query"); return; }
  const reader = new FileReader();
  reader.onload = () => {
    state.image = { name: file.name, data: reader.result };
    $("image-name").textContent = file.name;
    $("clear-image").hidden = false;
  };
  reader.readAsDataURL(file);
}

// serve --watch: the served collection follows folders; /health says when it last synced and what is pending
async function refreshSync() {
  try {
    const response = await fetch("/health", { headers: headers(false) });
    const watch = response.ok ? (await response.json()).watch : undefined;
    const line = $("sync");
    if (!watch) { line.hidden = true; return; }
    const when = watch.last_sync ? new Date(watch.last_sync).toLocaleTimeString() : "not yet";
    const t = watch.totals || {};
    line.textContent = `Folder sync (${(watch.paths || []).join(", ")}): last ${when}, ${watch.pending} pending; ` +
      `${t.added || 0} added, ${t.updated || 0} updated, ${t.removed || 0} removed, ${t.failed || 0} failed` +
      (watch.watching ? "" : " (stopped)");
    line.hidden = false;
  } catch (e) { /* the server is restarting: the next refresh tells */ }
}

function init() {
  refreshSync();
  setInterval(refreshSync, 5000);
  const wanted = new URLSearchParams(location.search).get("collection");  // /?collection=vs_... opens that one
  if (wanted) $("collection").value = wanted;
  $("search-form").addEventListener("submit", search);
  $("ask-button").addEventListener("click", ask);
  $("image").addEventListener("change", (e) => takeImage(e.target.files[0]));
  $("clear-image").addEventListener("click", () => {
    state.image = null; $("image").value = ""; $("image-name").textContent = ""; $("clear-image").hidden = true;
  });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value;
    sessionStorage.setItem("qwen3vl-rag-token", state.token);
    $("token-form").hidden = true;
    showError("");
  });
  $("viewer-close").addEventListener("click", () => $("viewer").close());
  const form = $("search-form");
  form.addEventListener("dragover", (e) => { e.preventDefault(); form.classList.add("drop"); });
  form.addEventListener("dragleave", () => form.classList.remove("drop"));
  form.addEventListener("drop", (e) => { e.preventDefault(); form.classList.remove("drop"); takeImage(e.dataTransfer.files[0]); });
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
    if (file) takeImage(file);
  });
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", init);
