// The web page of the job API: submit, watch a job over its event stream, download, list.
// Plain JavaScript, no libraries, nothing fetched from outside this server.
"use strict";

const KEY_STORAGE = "dip.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const $ = (id) => document.getElementById(id);

// ---- talking to the API ----------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function failureOf(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || "no answer";
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      if (Array.isArray(body.error.details) && body.error.details.length) {
        message += " (" + body.error.details.map((d) => d.message || d.msg || JSON.stringify(d)).join("; ") + ")";
      }
    }
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiFailure(response.status, code, message);
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  } catch (err) {
    throw new ApiFailure(0, "network", "the server could not be reached");
  }
  if (!response.ok) {
    const failure = await failureOf(response);
    if (failure.status === 401) askForKey();
    throw failure;
  }
  return response;
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

// ---- errors in plain words --------------------------------------------------------------

const ERROR_WORDS = {
  upload_too_large: "That file is too large for this server.",
  mask_size_mismatch: "The mask must be exactly the size of the image.",
  mask_required: "Inpainting needs a mask: paint one or upload one.",
  mask_not_allowed: "Only inpainting takes a mask.",
  image_too_small: "That image is too small.",
  image_too_large: "That image has too many pixels for this server.",
  invalid_image: "That file could not be read as an image.",
  invalid_parameter: "A parameter is not valid.",
  unauthorized: "The API key is missing or not valid.",
  forbidden: "This API key may not do that.",
  not_found: "That job does not exist (any more).",
  conflict: "That cannot be done in the job's current state.",
  queue_full: "Too many jobs are waiting; try again in a little while.",
  unavailable: "The service is unavailable right now; try again shortly.",
  no_worker: "No worker is running to take the job.",
  network: "The server could not be reached.",
  cross_site: "The server refused a request from this page.",
};

function plainWords(err) {
  if (err instanceof ApiFailure) {
    const lead = ERROR_WORDS[err.code] || `The server answered with an error (${err.code}).`;
    return `${lead} Details: ${err.message}`;
  }
  return `Something went wrong: ${err && err.message ? err.message : err}`;
}

function showError(err) {
  $("error-text").textContent = typeof err === "string" ? err : plainWords(err);
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

// ---- API key ------------------------------------------------------------------------------

function askForKey() {
  $("key-section").hidden = false;
  $("key-input").focus();
}

function setupKey() {
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    clearError();
    try {
      await api("/v1/jobs?limit=1");  // is it a key of this server?
    } catch (err) {
      if (err instanceof ApiFailure && err.status === 401) sessionStorage.removeItem(KEY_STORAGE);
      showError(err);
      $("key-input").select();
      return;
    }
    $("key-input").value = "";
    $("key-section").hidden = true;
    $("key-change").hidden = false;
    refreshJobs();
    if (current.id) openJob(current.id);
  });
  $("key-change").addEventListener("click", askForKey);
  $("key-change").hidden = !apiKey();
}

// ---- files behind the key --------------------------------------------------------------
// <img src> and <a href> cannot send the key header: fetch the file and show a blob URL.

const blobUrls = new Map();

async function fileUrl(url) {
  if (!apiKey()) return url;
  if (!blobUrls.has(url)) {
    const blob = await (await api(url)).blob();
    blobUrls.set(url, URL.createObjectURL(blob));
  }
  return blobUrls.get(url);
}

async function showImage(img, url, { fresh = false } = {}) {
  if (!url) {
    img.removeAttribute("src");
    return;
  }
  if (fresh && blobUrls.has(url)) {
    URL.revokeObjectURL(blobUrls.get(url));
    blobUrls.delete(url);
  }
  try {
    const src = await fileUrl(url);
    img.src = fresh && !apiKey() ? `${src}${src.includes("?") ? "&" : "?"}t=${Date.now()}` : src;
  } catch (err) {
    showError(err);
  }
}

function setDownload(link, url, name) {
  link.hidden = !url;
  if (!url) return;
  link.href = url;
  link.setAttribute("download", name);
  link.onclick = async (event) => {
    if (!apiKey()) return;  // a plain link works
    event.preventDefault();
    try {
      const blob = await (await api(url)).blob();
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = name;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (err) {
      showError(err);
    }
  };
}

// ---- submitting -----------------------------------------------------------------------------

const form = { image: null, maskPainted: false };

function setupSubmit() {
  const zone = $("drop-zone");
  $("image-input").addEventListener("change", () => {
    if ($("image-input").files.length) chooseImage($("image-input").files[0]);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) chooseImage(file);
  });
  $("task").addEventListener("change", showTaskParams);
  for (const radio of document.querySelectorAll("input[name=mask_mode]")) {
    radio.addEventListener("change", showTaskParams);
  }
  $("submit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submitJob();
  });
  showTaskParams();
}

function chooseImage(file) {
  form.image = file;
  const preview = $("image-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.onload = () => {
    const canvas = $("mask-canvas");
    canvas.width = preview.naturalWidth;
    canvas.height = preview.naturalHeight;
    form.maskPainted = false;
    $("mask-hint").textContent = `Paint the pixels to fill in (${canvas.width}×${canvas.height} px).`;
  };
  preview.src = URL.createObjectURL(file);
  $("drop-hint").textContent = `Chosen: ${file.name}. Choose or drop another to replace it.`;
  $("painter").hidden = false;
}

function maskMode() {
  return document.querySelector("input[name=mask_mode]:checked").value;
}

function showTaskParams() {
  const task = $("task").value;
  for (const set of document.querySelectorAll(".task-params")) set.hidden = set.dataset.task !== task;
  const painting = task === "inpaint" && maskMode() === "paint";
  $("mask-canvas").hidden = !painting;
  $("mask-tools").hidden = !painting;
  $("mask-upload").hidden = !(task === "inpaint" && maskMode() === "upload");
}

function setupPainter() {
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d");
  let drawing = false;
  let last = null;
  const brush = () => Number($("brush-size").value);
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return { x: (event.clientX - box.left) * canvas.width / box.width,
             y: (event.clientY - box.top) * canvas.height / box.height };
  };
  const stroke = (from, to) => {
    ctx.globalCompositeOperation = $("eraser").checked ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = "rgb(255, 0, 0)";
    ctx.lineWidth = brush();
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x + 0.01, to.y);
    ctx.stroke();
    form.maskPainted = true;
  };
  canvas.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    drawing = true;
    last = at(event);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const point = at(event);
    stroke(last, point);
    last = point;
  });
  const stop = () => { drawing = false; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  $("brush-size").addEventListener("input", () => {
    $("brush-size-value").textContent = `${brush()} px`;
  });
  $("mask-clear").addEventListener("click", () => {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    form.maskPainted = false;
  });
}

// The painted strokes as a mask PNG of the image's size: white known, black where painted.
function paintedMask() {
  const painted = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = painted.width;
  out.height = painted.height;
  const source = painted.getContext("2d").getImageData(0, 0, painted.width, painted.height).data;
  const octx = out.getContext("2d");
  const image = octx.createImageData(out.width, out.height);
  for (let i = 0; i < source.length; i += 4) {
    const value = source[i + 3] >= 128 ? 0 : 255;
    image.data[i] = image.data[i + 1] = image.data[i + 2] = value;
    image.data[i + 3] = 255;
  }
  octx.putImageData(image, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

async function submitJob() {
  clearError();
  if (!form.image) {
    showError("Choose an image first.");
    $("image-input").focus();
    return;
  }
  const task = $("task").value;
  const data = new FormData();
  data.append("image", form.image, form.image.name || "image.png");
  data.append("task", task);
  const fields = { preset: "preset", iterations: "iterations", early_stop: "early_stop" };
  const perTask = { denoise: ["add_noise_sigma"], superres: ["scale"], deblur: ["blur_sigma"],
                    dejpeg: ["jpeg_quality"], inpaint: [] };
  for (const name of perTask[task]) fields[name] = name;
  for (const [name, id] of Object.entries(fields)) {
    const value = $(id).value.trim();
    if (value !== "") data.append(name, value);
  }
  if (task === "inpaint") {
    if (maskMode() === "upload") {
      const file = $("mask-input").files[0];
      if (!file) {
        showError("Inpainting needs a mask: choose a mask file, or paint one over the image.");
        return;
      }
      data.append("mask", file, file.name || "mask.png");
    } else {
      if (!form.maskPainted) {
        showError("Inpainting needs a mask: paint the pixels to fill in over the image.");
        return;
      }
      data.append("mask", await paintedMask(), "mask.png");
    }
  }
  const button = $("submit-button");
  button.disabled = true;
  try {
    const job = await apiJson("/v1/jobs", { method: "POST", body: data });
    location.hash = `job=${job.id}`;
    await openJob(job.id);
    refreshJobs();
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}

// ---- one job, live -----------------------------------------------------------------------------

const current = { id: null, job: null, stream: null, history: [], metrics: {}, snapshots: [],
                  followLatest: true, historyTimer: null };

function snapshotIteration(name) {
  const match = /snapshot_0*(\d+)/.exec(name || "");
  return match ? Number(match[1]) : 0;
}

async function openJob(id) {
  if (current.stream) current.stream.abort();
  clearTimeout(current.historyTimer);
  Object.assign(current, { id, job: null, stream: null, history: [], metrics: {}, snapshots: [],
                           followLatest: true });
  $("job-section").hidden = false;
  $("job-heading").textContent = `Job ${id}`;
  $("result-figure").hidden = true;
  $("slider-row").hidden = true;
  $("job-snapshot").removeAttribute("src");
  $("job-connection").hidden = true;
  $("snapshot-caption").textContent = "No snapshot yet";
  let job;
  try {
    job = await apiJson(`/v1/jobs/${encodeURIComponent(id)}`);
  } catch (err) {
    showError(err);
    return;
  }
  if (current.id !== id) return;
  renderJob(job);
  showImage($("job-input"), job.inputs.image);
  await Promise.all([loadHistory(), loadSnapshots(job)]);
  if (current.id !== id) return;
  followEvents(id);  // a finished job's stream replays its events and ends
}

function renderJob(job) {
  current.job = job;
  $("job-heading").textContent = `Job ${job.id} (${job.task})`;
  setStatus(job.status, job.error);
  if (job.progress) setProgress(job.progress);
  if (job.metrics) setMetrics(job.metrics);
  const out = job.outputs || {};
  setDownload($("download-result"), out.result, `${job.id}-result.png`);
  setDownload($("download-best"), out.best, `${job.id}-best.png`);
  setDownload($("download-curves"), out.curves, `${job.id}-curves.png`);
  setDownload($("download-history"), job.links && `${job.links.history}?format=csv`, `${job.id}-history.csv`);
  if (out.result) {
    $("result-figure").hidden = false;
    showImage($("job-result"), out.result, { fresh: true });
  }
}

function setStatus(status, error) {
  const job = current.job;
  let text = `Status: ${status}`;
  if (status === "queued" && job && job.queue_position) text += ` (number ${job.queue_position} in the queue)`;
  $("job-status").textContent = text;
  $("job-status").dataset.status = status;
  $("cancel-button").disabled = TERMINAL.has(status);
  const box = $("job-error");
  box.hidden = !error;
  box.textContent = error ? plainWords(new ApiFailure(0, error.code, error.message)) : "";
}

function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${s % 60} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function setProgress(progress) {
  const bar = $("job-progress");
  bar.value = progress.fraction || 0;
  bar.dataset.iteration = progress.iteration;
  let text = `iteration ${progress.iteration} of ${progress.total}`;
  if (progress.eta_seconds != null) text += `, about ${duration(progress.eta_seconds)} left`;
  if (progress.iterations_per_second) text += ` (${progress.iterations_per_second.toFixed(1)} it/s)`;
  $("job-progress-text").textContent = text;
}

function setMetrics(metrics) {
  current.metrics = metrics || {};
  drawCurves();
}

async function loadHistory({ quiet = false } = {}) {
  const id = current.id;
  try {
    const points = await apiJson(`/v1/jobs/${encodeURIComponent(id)}/history`);
    if (current.id !== id) return;
    current.history = points;
    drawCurves();
  } catch (err) {
    // While the stream reconnects, a lost refresh is made up by the next one.
    const passing = err instanceof ApiFailure && (err.status === 0 || err.status >= 500);
    if (!(err instanceof ApiFailure && err.status === 404) && !(quiet && passing)) showError(err);
  }
}

// New points come with progress events: fetch the history at most twice a second.
function historySoon() {
  if (current.historyTimer) return;
  current.historyTimer = setTimeout(async () => {
    await loadHistory({ quiet: true });
    current.historyTimer = null;
  }, 500);
}

// ---- snapshots ----------------------------------------------------------------------------------

// Snapshots already written: listed in the job (outputs.snapshots), or, where the job gives only
// a count, paged from GET /v1/jobs/{id}/snapshots. The event stream adds the ones to come.
async function loadSnapshots(job) {
  const outputs = job.outputs || {};
  if (Array.isArray(outputs.snapshots)) {
    for (const item of outputs.snapshots) addSnapshot(snapshotOf(item));
    return;
  }
  if (!outputs.snapshot_count && !outputs.latest_snapshot) return;
  const base = (job.links && job.links.snapshots) || `/v1/jobs/${encodeURIComponent(job.id)}/snapshots`;
  let cursor = null;
  try {
    for (let page = 0; page < 100; page++) {
      const url = new URL(base, location.href);
      url.searchParams.set("limit", "100");
      if (cursor) url.searchParams.set("cursor", cursor);
      const body = await apiJson(url.pathname + url.search);
      if (current.id !== job.id) return;
      const items = Array.isArray(body) ? body : body.items || [];
      for (const item of items) addSnapshot(snapshotOf(item));
      cursor = Array.isArray(body) ? null : body.next_cursor;
      if (!cursor || !items.length) break;
    }
  } catch (err) {
    if (outputs.latest_snapshot) addSnapshot(snapshotOf(outputs.latest_snapshot));
  }
}

function snapshotOf(item) {
  return typeof item === "string" ? { url: item, name: item.split("/").pop() } : item;
}

function addSnapshot(snapshot) {
  const name = snapshot.name || snapshot.url.split("/").pop();
  if (current.snapshots.some((s) => s.name === name)) return;
  const iteration = snapshot.iteration != null ? snapshot.iteration : snapshotIteration(name);
  current.snapshots.push({ name, url: snapshot.url, iteration });
  current.snapshots.sort((a, b) => a.iteration - b.iteration);
  const slider = $("snapshot-slider");
  slider.max = String(current.snapshots.length - 1);
  $("slider-row").hidden = current.snapshots.length < 2;
  if (current.followLatest) {
    slider.value = slider.max;
    showSnapshot(current.snapshots.length - 1);
  }
}

function showSnapshot(index) {
  const snapshot = current.snapshots[index];
  if (!snapshot) return;
  const total = current.snapshots.length;
  const slider = $("snapshot-slider");
  slider.setAttribute("aria-valuetext", `iteration ${snapshot.iteration} (${index + 1} of ${total})`);
  $("snapshot-caption").textContent = `Snapshot at iteration ${snapshot.iteration} (${index + 1} of ${total})`;
  showImage($("job-snapshot"), snapshot.url);
}

function setupSlider() {
  const slider = $("snapshot-slider");
  slider.addEventListener("input", () => {
    const index = Number(slider.value);
    current.followLatest = index === current.snapshots.length - 1;
    showSnapshot(index);
  });
}

// ---- the event stream -------------------------------------------------------------------------------
// EventSource cannot send the key header: read the stream with fetch() and parse it here,
// resuming after the last event id when the connection drops.

function followEvents(id) {
  const controller = new AbortController();
  current.stream = controller;
  let lastId = "";
  let done = false;
  let retry = 1000;

  const dispatch = (type, data, eventId) => {
    if (eventId) lastId = eventId;
    let payload;
    try { payload = JSON.parse(data); } catch (_) { return; }
    if (current.id !== id) return;
    if (type === "progress") {
      if (payload.progress) setProgress(payload.progress);
      if (payload.metrics) setMetrics(payload.metrics);
      historySoon();
    } else if (type === "snapshot") {
      addSnapshot(payload);
    } else if (type === "status") {
      setStatus(payload.status, payload.error);
      if (TERMINAL.has(payload.status)) {
        done = true;
        finished(id);
      }
    }
  };

  const read = async () => {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (lastId) headers["Last-Event-ID"] = lastId;
    const response = await fetch(`/v1/jobs/${encodeURIComponent(id)}/events`,
                                 { headers, signal: controller.signal, cache: "no-store" });
    if (!response.ok) {
      const failure = await failureOf(response);
      if (failure.status === 401) askForKey();
      throw failure;
    }
    retry = 1000;
    $("job-connection").hidden = true;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let event = { type: "message", data: [], id: "" };
    for (;;) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();  // an unfinished line waits for more bytes
      for (const line of lines) {
        if (line === "") {
          if (event.data.length) dispatch(event.type, event.data.join("\n"), event.id);
          event = { type: "message", data: [], id: "" };
          continue;
        }
        if (line.startsWith(":")) continue;  // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event.type = value;
        else if (field === "data") event.data.push(value);
        else if (field === "id") event.id = value;
        else if (field === "retry" && /^\d+$/.test(value)) retry = Number(value);
      }
    }
  };

  (async () => {
    while (!done && current.id === id && !controller.signal.aborted) {
      try {
        await read();
      } catch (err) {
        if (controller.signal.aborted) return;
        if (err instanceof ApiFailure && err.status !== 0 && err.status < 500) {
          showError(err);
          return;
        }
      }
      if (done || controller.signal.aborted) return;
      $("job-connection").hidden = false;
      await new Promise((resolve) => setTimeout(resolve, retry));
      retry = Math.min(retry * 2, 15000);
    }
  })();
}

async function finished(id) {
  try {
    const job = await apiJson(`/v1/jobs/${encodeURIComponent(id)}`);
    if (current.id !== id) return;
    renderJob(job);
    await Promise.all([loadHistory(), loadSnapshots(job)]);
  } catch (err) {
    showError(err);
  }
  refreshJobs();
}

function setupCancel() {
  $("cancel-button").addEventListener("click", async () => {
    if (!current.id) return;
    clearError();
    try {
      const job = await apiJson(`/v1/jobs/${encodeURIComponent(current.id)}/cancel`, { method: "POST" });
      current.job = job;
      setStatus(job.cancel_requested && !TERMINAL.has(job.status) ? "stopping" : job.status, job.error);
      refreshJobs();
    } catch (err) {
      showError(err);
    }
  });
}

// ---- curves -----------------------------------------------------------------------------------------

function drawCurves() {
  const canvas = $("curves");
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(200, Math.round(canvas.clientWidth || 640));
  const height = Math.round(width * 0.4);
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const points = current.history;
  canvas.dataset.points = String(points.length);
  const pad = { left: 52, right: 48, top: 10, bottom: 24 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  ctx.strokeStyle = "#888";
  ctx.lineWidth = 1;
  ctx.strokeRect(pad.left, pad.top, plotW, plotH);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#333";
  const summary = [];
  if (!points.length) {
    ctx.fillText("No points yet", pad.left + 8, pad.top + 18);
    canvas.setAttribute("aria-label", "Loss and PSNR curves: no points yet");
    return;
  }
  const total = (current.job && current.job.progress && current.job.progress.total) || 0;
  const maxIt = Math.max(total, ...points.map((p) => p.iteration), 1);
  const x = (it) => pad.left + plotW * it / maxIt;

  const series = (key, transform, color, side, unit) => {
    const values = points.filter((p) => p[key] != null && isFinite(p[key]) && (transform !== Math.log10 || p[key] > 0));
    if (!values.length) return;
    const ys = values.map((p) => transform(p[key]));
    let lo = Math.min(...ys);
    let hi = Math.max(...ys);
    if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
    const y = (v) => pad.top + plotH * (1 - (v - lo) / (hi - lo));
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    values.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x(p.iteration), y(ys[i])));
    ctx.stroke();
    ctx.fillStyle = color;
    const label = (v) => (transform === Math.log10 ? Number(Math.pow(10, v).toPrecision(2)).toExponential(0)
                                                   : v.toFixed(1));
    const tx = side === "left" ? 2 : width - pad.right + 4;
    ctx.fillText(label(hi), tx, pad.top + 10);
    ctx.fillText(label(lo), tx, pad.top + plotH);
    const latest = values[values.length - 1][key];
    summary.push(`${key} ${Number(latest).toPrecision(4)}${unit}`);
  };
  series("loss", Math.log10, "#1f5fbf", "left", "");
  series("psnr", (v) => v, "#c25400", "right", " dB");

  const marker = (iteration, color, name) => {
    if (iteration == null) return;
    ctx.strokeStyle = color;
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(x(iteration), pad.top);
    ctx.lineTo(x(iteration), pad.top + plotH);
    ctx.stroke();
    ctx.setLineDash([]);
    summary.push(`${name} at iteration ${iteration}`);
  };
  marker(current.metrics.best_iteration, "#1a8a2e", "best");
  marker(current.metrics.early_stop_iteration, "#c0182b", "early stop");
  ctx.fillStyle = "#333";
  ctx.fillText("0", pad.left, height - 6);
  const end = String(maxIt);
  ctx.fillText(end, pad.left + plotW - ctx.measureText(end).width, height - 6);
  canvas.setAttribute("aria-label", `Loss and PSNR curves, ${points.length} points: ${summary.join(", ")}`);
}

// ---- the list of jobs -------------------------------------------------------------------------------

async function refreshJobs() {
  let page;
  try {
    page = await apiJson("/v1/jobs?limit=20");
  } catch (err) {
    if (!(err instanceof ApiFailure && err.status === 401)) showError(err);
    return;
  }
  const list = $("jobs-list");
  list.replaceChildren();
  for (const job of page.items) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "job-link";
    button.dataset.jobId = job.id;
    button.dataset.status = job.status;
    const when = new Date(job.created_at).toLocaleString();
    button.textContent = `${job.task}: ${job.status} (${when})`;
    button.setAttribute("aria-label", `Open ${job.task} job ${job.id}, ${job.status}, submitted ${when}`);
    button.addEventListener("click", () => {
      location.hash = `job=${job.id}`;
      openJob(job.id);
      $("job-heading").scrollIntoView();
    });
    item.appendChild(button);
    list.appendChild(item);
  }
  $("jobs-empty").hidden = page.items.length > 0;
}

// ---- start ------------------------------------------------------------------------------------------------

function jobFromHash() {
  const match = /job=([A-Za-z0-9_-]+)/.exec(location.hash);
  return match ? match[1] : null;
}

document.addEventListener("DOMContentLoaded", () => {
  setupKey();
  setupSubmit();
  setupPainter();
  setupSlider();
  setupCancel();
  $("error-close").addEventListener("click", clearError);
  $("jobs-refresh").addEventListener("click", refreshJobs);
  window.addEventListener("resize", drawCurves);
  window.addEventListener("hashchange", () => {
    const id = jobFromHash();
    if (id && id !== current.id) openJob(id);
  });
  refreshJobs();
  const id = jobFromHash();
  if (id) openJob(id);
});
