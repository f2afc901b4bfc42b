// The page of `vlir serve`: upload an image to this server, show what came back. No other host is
// contacted (the server's Content-Security-Policy enforces it).
"use strict";
const $ = (id) => document.getElementById(id);
let info = null;
let file = null;
let resultUrl = null;

// as the server writes sizes (decimal units, as --max-upload-mb)
const size = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} kB` : `${n} bytes`);

function state(s) { document.body.dataset.state = s; }

function say(text) { $("status").textContent = text; }

function fail(text) {
  const m = $("message");
  m.textContent = text;
  m.hidden = false;
  say("");
  state("error");
}

async function loadInfo() {
  try {
    const r = await fetch("api/info");
    info = await r.json();
  } catch (e) {
    fail(`cannot reach the vlir server: ${e}`);
    return;
  }
  $("pipeline").textContent = info.pipeline;
  const sel = $("degradation");
  for (const c of info.classes) {
    const o = document.createElement("option");
    o.value = c;
    o.textContent = c;
    sel.append(o);
  }
  if (!info.steerable) {
    for (const id of ["degradation", "instruction"]) {
      $(id).disabled = true;
      $(id).title = "this model cannot be told the degradation";
    }
  }
}

function pick(f) {
  if (!f) return;
  $("message").hidden = true;
  if (info && f.size > info.max_bytes) {
    fail(`${f.name} is ${size(f.size)}; the limit is ${size(info.max_bytes)} (vlir serve --max-upload-mb)`);
    return;
  }
  file = f;
  $("run").disabled = false;
  restore();
}

async function restore() {
  if (!file) return;
  $("message").hidden = true;
  $("run").disabled = true;
  state("busy");
  const started = performance.now();
  say(`restoring ${file.name} …`);
  const q = new URLSearchParams({ name: file.name });
  const chosen = $("degradation").value;
  const instruction = $("instruction").value.trim();
  if (chosen) q.set("degradation", chosen);
  else if (instruction) q.set("instruction", instruction);
  let body;
  try {
    const r = await fetch(`api/restore?${q}`, {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    try { body = await r.json(); } catch { body = { error: `the server answered ${r.status} ${r.statusText}` }; }
    if (!r.ok && !body.error) body.error = `the server answered ${r.status}`;
  } catch (e) {
    body = { error: `the upload failed: ${e}` };
  }
  $("run").disabled = false;
  if (body.error) { fail(body.error); return; }
  try {
    show(body, (performance.now() - started) / 1000);
  } catch (e) {
    fail(`cannot show the result: ${e}`);
  }
}

// a data URL as a Blob (fetch() of a data URL is not "self" for the page's connect-src)
function blob(dataUrl) {
  const [head, b64] = dataUrl.split(",");
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: head.slice(5).split(";")[0] });
}

function show(res, seconds) {
  // shown at its own size (small images at least 480 pixels wide), never wider than the page
  $("compare").style.width = `${Math.max(res.width, 480)}px`;
  $("before").src = res.before;
  $("after").src = res.image;
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = URL.createObjectURL(blob(res.image));
  const a = $("download");
  a.href = resultUrl;
  a.download = res.name;
  a.textContent = `Download ${res.name}`;

  const list = $("classes");
  list.replaceChildren();
  const probs = Object.entries(res.probabilities).sort((x, y) => y[1] - x[1]);
  for (const [name, p] of probs) {
    const li = document.createElement("li");
    li.dataset.class = name;
    if (name === res.degradation) li.classList.add("top");
    if (name === res.used) li.classList.add("used");
    const n = document.createElement("span");
    n.className = "name";
    n.textContent = name;
    const m = document.createElement("meter");
    m.min = 0; m.max = 1; m.value = p;
    const v = document.createElement("span");
    v.className = "p";
    v.textContent = `${(100 * p).toFixed(1)}%`;
    li.append(n, m, v);
    list.append(li);
  }
  if (!probs.length) {
    const li = document.createElement("li");
    li.textContent = "this model has no degradation classes";
    list.append(li);
  }
  const path = $("path");
  path.replaceChildren();
  if (res.instruction) res.path.splice(1, 0, `instruction "${res.instruction}" → ${res.chosen}`);
  for (const step of res.path) {
    const li = document.createElement("li");
    li.textContent = step;
    path.append(li);
  }
  $("result").hidden = false;
  slide();
  say(`${res.width}×${res.height} restored in ${res.seconds.toFixed(2)} s (${seconds.toFixed(1)} s with the upload)`
      + (res.note ? ` — ${res.note}` : ""));
  state("done");
}

function slide() {
  const v = $("slider").value;
  $("after").style.clipPath = `inset(0 0 0 ${v}%)`;
  $("divider").style.left = `${v}%`;
}

function setup() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    pick(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => pick(e.target.files[0]));
  $("run").addEventListener("click", restore);
  $("instruction").addEventListener("keydown", (e) => { if (e.key === "Enter") restore(); });
  $("degradation").addEventListener("change", () => { if ($("degradation").value) $("instruction").value = ""; });
  $("slider").addEventListener("input", slide);
  loadInfo();
}

setup();
