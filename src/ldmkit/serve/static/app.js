// ldmkit serve: one page, no build step. Shows only the controls the selected model takes.
"use strict";
const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url);
let models = [], current = null, boxes = [], job = null, source = null;
const uploads = { image: null, low_res: null, segmentation: null };

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = "Bearer " + token;
  const res = await fetch(path, { ...options, headers });
  const body = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

function showError(msg) { $("error").textContent = msg || ""; }

function fillSelect(select, items) {
  select.innerHTML = "";
  items.forEach(([value, text]) => {
    const o = document.createElement("option");
    o.value = value; o.textContent = text; select.appendChild(o);
  });
}

function selectModel(name) {
  current = models.find((m) => m.name === name);
  document.querySelectorAll("[data-needs]").forEach((el) => { el.hidden = !current[el.dataset.needs]; });
  fillSelect($("class"), (current.class_names || []).map((n, i) => [i, n]));
  fillSelect($("box-class"), (current.box_classes || []).map((n, i) => [i + 1, n]));
  fillSelect($("sampler"), current.samplers.map((s) => [s, s]));
  $("size").value = current.size;
  $("size").step = current.size_multiple;
  $("image-label").textContent = current.inpaint_model
    ? "Image to inpaint (paint the region to fill)" : "Image (optional: img2img, or paint a mask to inpaint)";
  $("model-info").textContent = `${current.size}px` + (current.loras.length ? `, LoRA: ${current.loras.join(", ")}` : "");
  boxes = []; drawBoxes();
}

// ---- layout boxes: drag on the canvas
const bc = $("boxes-canvas"), bctx = bc.getContext("2d");
let dragStart = null;
function canvasPoint(canvas, e) {
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
}
function drawBoxes(extra) {
  bctx.clearRect(0, 0, bc.width, bc.height);
  const list = $("boxes-list"); list.innerHTML = "";
  [...boxes, ...(extra ? [extra] : [])].forEach((b, i) => {
    bctx.strokeStyle = `hsl(${(b.label * 67) % 360} 70% 40%)`; bctx.lineWidth = 2;
    bctx.strokeRect(b.x0 * bc.width, b.y0 * bc.height, (b.x1 - b.x0) * bc.width, (b.y1 - b.y0) * bc.height);
    if (b === extra) return;
    const li = document.createElement("li");
    li.textContent = `${(current.box_classes || [])[b.label - 1] || b.label}: ` +
      [b.x0, b.y0, b.x1, b.y1].map((v) => v.toFixed(2)).join(", ") + " ";
    const del = document.createElement("button"); del.type = "button"; del.textContent = "x";
    del.onclick = () => { boxes.splice(i, 1); drawBoxes(); };
    li.appendChild(del); list.appendChild(li);
  });
}
function boxFrom(a, b) {
  const c = (v, s) => Math.min(1, Math.max(0, v / s));
  return { label: Number($("box-class").value), x0: c(Math.min(a[0], b[0]), bc.width), y0: c(Math.min(a[1], b[1]), bc.height),
           x1: c(Math.max(a[0], b[0]), bc.width), y1: c(Math.max(a[1], b[1]), bc.height) };
}
bc.addEventListener("mousedown", (e) => { dragStart = canvasPoint(bc, e); });
bc.addEventListener("mousemove", (e) => { if (dragStart) drawBoxes(boxFrom(dragStart, canvasPoint(bc, e))); });
window.addEventListener("mouseup", (e) => {
  if (!dragStart) return;
  const b = boxFrom(dragStart, canvasPoint(bc, e)); dragStart = null;
  if (b.x1 - b.x0 > 0.02 && b.y1 - b.y0 > 0.02) boxes.push(b);
  drawBoxes();
});
$("boxes-clear").onclick = () => { boxes = []; drawBoxes(); };

// ---- uploads and the mask painter
function readFile(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader(); r.onload = () => resolve(r.result); r.onerror = reject; r.readAsDataURL(file);
  });
}
const mc = $("mask-canvas"), mctx = mc.getContext("2d");
let painted = false, painting = false;
$("image-file").addEventListener("change", async (e) => {
  const file = e.target.files[0]; if (!file) return;
  uploads.image = await readFile(file);
  const img = $("image-view");
  img.onload = () => {
    mc.width = img.naturalWidth; mc.height = img.naturalHeight; painted = false;
    mctx.clearRect(0, 0, mc.width, mc.height);
    $("size").value = img.naturalWidth;
    $("paint").hidden = false; updateStrength();
  };
  img.src = uploads.image;
});
function paintAt(e) {
  const [x, y] = canvasPoint(mc, e);
  const r = Number($("brush").value) * mc.width / mc.getBoundingClientRect().width;
  mctx.fillStyle = "#fff"; mctx.beginPath(); mctx.arc(x, y, r, 0, 2 * Math.PI); mctx.fill();
  painted = true; updateStrength();
}
mc.addEventListener("mousedown", (e) => { painting = true; paintAt(e); });
mc.addEventListener("mousemove", (e) => { if (painting) paintAt(e); });
window.addEventListener("mouseup", () => { painting = false; });
$("mask-clear").onclick = () => { mctx.clearRect(0, 0, mc.width, mc.height); painted = false; updateStrength(); };
$("image-remove").onclick = () => { uploads.image = null; $("image-file").value = ""; $("paint").hidden = true; painted = false; };
function updateStrength() { $("strength-row").hidden = painted || current.inpaint_model; }
function maskDataURL() {
  // painted pixels white on black, at the image's own size
  const out = document.createElement("canvas"); out.width = mc.width; out.height = mc.height;
  const o = out.getContext("2d"); o.fillStyle = "#000"; o.fillRect(0, 0, out.width, out.height);
  const src = mctx.getImageData(0, 0, mc.width, mc.height), dst = o.getImageData(0, 0, out.width, out.height);
  for (let i = 0; i < src.data.length; i += 4) {
    const v = src.data[i + 3] > 0 ? 255 : 0; dst.data[i] = dst.data[i + 1] = dst.data[i + 2] = v;
  }
  o.putImageData(dst, 0, 0);
  return out.toDataURL("image/png");
}
$("lowres-file").addEventListener("change", async (e) => { uploads.low_res = e.target.files[0] ? await readFile(e.target.files[0]) : null; });
$("seg-file").addEventListener("change", async (e) => { uploads.segmentation = e.target.files[0] ? await readFile(e.target.files[0]) : null; });

// ---- a request from the controls; generation; progress
function request(overrides = {}) {
  const num = (id) => ($(id).value === "" ? null : Number($(id).value));
  const req = { model: current.name, sampler: $("sampler").value, steps: num("steps"), seed: num("seed"),
                n: num("n"), size: num("size") };
  if (current.guidance) req.guidance = num("guidance");
  if (current.class) req.class_label = Number($("class").value);
  if (current.text) { req.prompt = $("prompt").value; if ($("negative").value) req.negative_prompt = $("negative").value; }
  if (current.boxes) req.boxes = boxes;
  if (current.low_res && uploads.low_res) { req.low_res = uploads.low_res; delete req.size; }
  if (current.segmentation && uploads.segmentation) { req.segmentation = uploads.segmentation; delete req.size; }
  if (uploads.image) {
    req.image = uploads.image; delete req.size;
    if (painted) req.mask = maskDataURL();
    else if (!current.inpaint_model) req.strength = num("strength");
  }
  return { ...req, ...overrides };
}

function setProgress(step, total) {
  $("progress").setAttribute("value", total ? step / total : 0);
}

async function generate() {
  showError("");
  let started;
  try {
    started = await api("api/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
                                      body: JSON.stringify(request()) });
  } catch (err) { showError(err.message); return; }
  job = started; setProgress(0, job.total);
  $("status").textContent = `queued (${job.position || 0} ahead)`;
  $("cancel").disabled = false; $("generate").disabled = true;
  let shown = 0;
  source = new EventSource(withToken(`api/jobs/${job.id}/events`));
  source.onmessage = (e) => {
    const j = JSON.parse(e.data); job = j;
    setProgress(j.step, j.total);
    $("status").textContent = j.status === "queued" ? `queued (${j.position || 0} ahead)` :
      j.status === "running" ? `step ${j.step} / ${j.total}` : j.status + (j.error ? ": " + j.error : "");
    if (j.preview && j.preview !== shown) {
      shown = j.preview; $("preview").hidden = false;
      $("preview").src = withToken(`api/jobs/${j.id}/preview.png?k=${shown}`);
    }
    if (["done", "failed", "cancelled"].includes(j.status)) {
      source.close(); source = null; $("cancel").disabled = true; $("generate").disabled = false;
      if (j.status === "done") { setProgress(1, 1); addResults(j); }
      if (j.status === "failed") showError(j.error);
    }
  };
}

function addResults(j) {
  j.images.forEach((url, k) => {
    const card = document.createElement("div"); card.className = "card";
    const img = document.createElement("img"); img.src = withToken(url); img.className = "result";
    img.dataset.seed = j.seeds[k];
    const caption = document.createElement("div");
    caption.textContent = `seed ${j.seeds[k]} · ${j.settings.sampler} ${j.settings.steps} steps` +
      (j.settings.prompt ? ` · ${j.settings.prompt}` : "");
    const row = document.createElement("div"); row.className = "row";
    const reuseSeed = document.createElement("button"); reuseSeed.type = "button"; reuseSeed.textContent = "reuse seed";
    reuseSeed.onclick = () => { $("seed").value = j.seeds[k]; $("n").value = 1; };
    const reuse = document.createElement("button"); reuse.type = "button"; reuse.textContent = "reuse settings";
    reuse.onclick = () => reuseSettings(j.settings, j.seeds[k]);
    const dl = document.createElement("a"); dl.href = withToken(url); dl.textContent = "download";
    dl.download = url.split("/").pop();
    row.append(reuseSeed, reuse, dl);
    card.append(img, caption, row);
    $("gallery").prepend(card);
  });
}

function reuseSettings(s, seed) {
  if (s.model !== current.name) { $("model").value = s.model; selectModel(s.model); }
  $("sampler").value = s.sampler; $("steps").value = s.steps; $("seed").value = seed; $("n").value = 1;
  if (s.guidance != null) $("guidance").value = s.guidance;
  if (s.size) $("size").value = s.size;
  if (s.prompt != null) $("prompt").value = s.prompt;
  $("negative").value = s.negative_prompt || "";
  if (s.class_label != null) $("class").value = s.class_label;
  if (s.boxes) { boxes = s.boxes.map(([label, x0, y0, x1, y1]) => ({ label, x0, y0, x1, y1 })); drawBoxes(); }
}

$("generate").onclick = generate;
$("cancel").onclick = async () => { if (job) { try { await api(`api/jobs/${job.id}`, { method: "DELETE" }); } catch (err) { showError(err.message); } } };
$("model").onchange = (e) => selectModel(e.target.value);

(async () => {
  try {
    const info = await api("api/models");
    models = info.models;
    fillSelect($("model"), models.map((m) => [m.name, m.name]));
    $("steps").max = info.limits.max_steps; $("n").max = info.limits.max_n; $("size").max = info.limits.max_size;
    selectModel(models[0].name);
    document.body.dataset.ready = "1";
  } catch (err) { showError(err.message); }
})();
