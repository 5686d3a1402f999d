// nanovla serve's page: a client of the server's own OpenAI-compatible API (POST
// /v1/chat/completions with stream: true), so what the page shows is what any client gets.
// Plain JavaScript, no framework or CDN: the page works on a robot's network with no internet.
"use strict";

const $ = (id) => document.getElementById(id);
let modelId = null;
let imageUrl = null;   // the chosen image as a data URL (sent with every question; the server caches its context)
let imageName = "";
let busy = false;

// ---------------------------------------------------------------- the API
async function streamChat(dataUrl, question, onText) {
  // -> {text, totalMs, firstMs, stats}; throws an Error with the server's message on a 4xx/5xx
  const content = [{type: "image_url", image_url: {url: dataUrl}}];
  if (question !== null) content.push({type: "text", text: question});
  const started = performance.now();
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({model: modelId, stream: true, messages: [{role: "user", content}]}),
  });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "", firstMs = null, stats = null;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") return {text, totalMs: performance.now() - started, firstMs, stats};
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices[0].delta.content;
      if (delta) {
        if (firstMs === null) firstMs = performance.now() - started;
        text += delta;
        onText(text);
      }
      if (chunk.nanovla) stats = chunk.nanovla;
    }
  }
  throw new Error("the stream ended without [DONE]");
}

function latencyLine(r) {
  const parts = [`${Math.round(r.totalMs)} ms`];
  if (r.firstMs !== null) parts.push(`first word ${Math.round(r.firstMs)} ms`);
  if (r.stats) parts.push(r.stats.image_cached ? "image context cached" : `encode ${Math.round(r.stats.encode_ms)} ms`,
                          `${r.stats.completion_tokens} token${r.stats.completion_tokens === 1 ? "" : "s"}`);
  return parts.join(" · ");
}

async function run(dataUrl, question, target, latencyTarget) {
  // stream one answer into `target`; returns the answer text, or null after an error
  target.dataset.state = "streaming";
  target.textContent = "";
  if (latencyTarget) latencyTarget.textContent = "";
  try {
    const r = await streamChat(dataUrl, question, (text) => { target.textContent = text; });
    target.textContent = r.text;
    target.dataset.state = "done";
    if (latencyTarget) latencyTarget.textContent = latencyLine(r);
    return {text: r.text, latency: latencyLine(r)};
  } catch (e) {
    target.textContent = e.message;
    target.dataset.state = "error";
    return null;
  }
}

function addHistory(dataUrl, question, answer) {
  const item = document.createElement("li");
  const thumb = document.createElement("img");
  thumb.src = dataUrl;
  thumb.alt = imageName;
  const q = document.createElement("span");
  q.className = "q";
  q.textContent = question === null ? "describe" : question;
  const a = document.createElement("div");
  a.textContent = answer.text;
  const l = document.createElement("div");
  l.className = "muted";
  l.textContent = answer.latency;
  item.append(thumb, q, a, l);
  $("history").prepend(item);
}

// ---------------------------------------------------------------- choosing an image
function setBusy(value) {
  busy = value;
  $("ask").disabled = value || imageUrl === null;
  $("question").disabled = imageUrl === null;
}

async function useImage(dataUrl, name) {
  if (busy) return;
  imageUrl = dataUrl;
  imageName = name;
  $("preview").src = dataUrl;
  $("figure").hidden = false;
  $("answer").textContent = "";
  $("answer-latency").textContent = "";
  setBusy(true);
  const answer = await run(dataUrl, null, $("description"), $("description-latency"));
  if (answer === null) imageUrl = null;  // not an image the server accepts: no questions about it
  else addHistory(dataUrl, null, answer);
  setBusy(false);
}

function readFile(file) {
  const reader = new FileReader();
  reader.onload = () => useImage(reader.result, file.name);
  reader.readAsDataURL(file);
}

function blobToDataUrl(blob) {
  return new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.readAsDataURL(blob);
  });
}

$("file").addEventListener("change", (e) => { if (e.target.files.length) readFile(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) readFile(e.dataTransfer.files[0]);
});

$("ask-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const question = $("question").value.trim();
  if (busy || imageUrl === null) return;
  setBusy(true);
  const answer = await run(imageUrl, question, $("answer"), $("answer-latency"));
  if (answer !== null) addHistory(imageUrl, question, answer);
  setBusy(false);
});

// ---------------------------------------------------------------- the camera (--ros-topic)
let cameraSeq = null;

async function refreshCamera() {
  const state = await (await fetch("/ros/state")).json();
  if (!state.enabled) return false;
  $("camera-panel").hidden = false;
  $("camera-topic").textContent = state.topic;
  $("camera-status").textContent = `${state.frames} frames` + (state.frame_size ? ` · ${state.frame_size.join("x")}` : "")
      + (state.errors ? ` · ${state.errors} bad frames (${state.last_error})` : "");
  if (state.frame_seq !== null && state.frame_seq !== cameraSeq) {
    cameraSeq = state.frame_seq;
    $("camera-frame").src = `/ros/frame.jpg?seq=${cameraSeq}`;
  }
  const d = state.description;
  if (d.seq >= 0) {
    $("camera-description").textContent = d.error ? d.error : `${d.text} (frame ${d.seq}, ${d.latency_ms} ms)`;
    $("camera-description").dataset.state = d.error ? "error" : "done";
  }
  return true;
}

$("camera-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const question = $("camera-question").value.trim();
  const response = await fetch("/ros/frame.jpg");
  if (!response.ok) { $("camera-answer").textContent = "no camera frame yet"; return; }
  const dataUrl = await blobToDataUrl(await response.blob());  // exactly the bytes the describer used
  const answer = await run(dataUrl, question, $("camera-answer"), null);
  if (answer !== null) addHistory(dataUrl, question, answer);
});

// ---------------------------------------------------------------- start
async function start() {
  try {
    modelId = (await (await fetch("/v1/models")).json()).data[0].id;
    const health = await (await fetch("/health")).json();
    $("model").textContent = `${modelId} · ${health.backend}`;
  } catch (e) {
    $("model").textContent = `server not answering (${e.message})`;
  }
  const samples = (await (await fetch("/samples")).json()).samples;
  for (const name of samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.textContent = name;
    button.addEventListener("click", async () => {
      $("file").value = "";  // the file input no longer names the shown image
      const blob = await (await fetch(`/samples/${encodeURIComponent(name)}`)).blob();
      useImage(await blobToDataUrl(blob), name);
    });
    $("samples").append(button);
  }
  if (await refreshCamera()) setInterval(() => refreshCamera().catch(() => {}), 500);
}

start();
