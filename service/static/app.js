// The colorizer web page: colorize a photograph, follow training jobs, compare published versions.
// Plain JavaScript against the JSON API of this same server; no framework, no build step.
// Every URL is relative, so the page also works behind a reverse proxy's path prefix.
"use strict";

const API_KEY_STORAGE = "colorizer.apiKey";
const POLL_ACTIVE_MS = 1500; // while a job is queued or running
const POLL_IDLE_MS = 15000; // to notice jobs started elsewhere
const ACTIVE_STATES = new Set(["queued", "running"]);
const FORMAT_EXTENSIONS = { png: "png", jpeg: "jpg", webp: "webp" };

const $ = (selector, root = document) => root.querySelector(selector);

// -- talking to the API ------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function apiKey() {
  return sessionStorage.getItem(API_KEY_STORAGE) || "";
}

/** The sentence to show for a failed response: the API's `detail`, plus what the person can do. */
async function errorFrom(response) {
  let detail = "";
  try {
    const body = await response.clone().json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
  } catch {
    // Not JSON (a proxy's error page, say): a short piece of its text is better than nothing.
    detail = (await response.text()).replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 200);
  }
  let message = detail || `the server answered ${response.status} ${response.statusText}`.trim();
  if (response.status === 401) message += ". Enter the API key at the top of the page.";
  const retry = response.headers.get("Retry-After");
  if (retry && /^\d+$/.test(retry)) message += ` (Retry in ${retry} s.)`;
  return new ApiError(response.status, message);
}

/** fetch() that throws an ApiError with a readable message for a network failure or a non-2xx answer. */
async function api(path, { method = "GET", body, json, auth = false, signal } = {}) {
  const headers = new Headers();
  if (auth && apiKey()) headers.set("X-API-Key", apiKey());
  if (json !== undefined) {
    headers.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, body, headers, signal, cache: "no-store" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "the server could not be reached; check that it is running and try again");
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

/** Show `text` in a message region (hidden when empty); unchanged text is not set again, so a poll
 * that fails the same way each time is not announced by screen readers each time. */
function showMessage(element, text) {
  if (element.textContent !== text) element.textContent = text;
  element.hidden = !text;
}

// -- small formatting helpers --------------------------------------------------------------------

function formatDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function formatNumber(value, digits) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

function formatTime(epochSeconds) {
  if (!epochSeconds) return "–";
  return new Date(epochSeconds * 1000).toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
}

function versionLabel(version) {
  return version === "default" ? "default model" : `version ${version}`;
}

// -- views -------------------------------------------------------------------------------------

const VIEWS = ["colorize", "training"];

function currentView() {
  const name = location.hash.slice(1);
  return VIEWS.includes(name) ? name : "colorize";
}

function showView() {
  const name = currentView();
  for (const view of VIEWS) {
    $(`#view-${view}`).hidden = view !== name;
    const tab = $(`#tab-${view}`);
    if (view === name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  if (name === "training") {
    refreshDatasets();
    refreshJobs();
  } else {
    stopJobsPolling();
  }
}

// -- server status and models --------------------------------------------------------------------

let modelsInfo = { served: null, versions: [] };

let statusTimer = null;

/** The header's line from GET /readyz; reloads the versions when another one is now served.
 * Asks again in 2 s while the server is not ready (starting up), else in 15 s. */
async function refreshServerStatus({ followModels = true } = {}) {
  const status = $("#server-status");
  clearTimeout(statusTimer);
  let ready = false;
  try {
    const response = await fetch("readyz", { cache: "no-store" });
    const body = await response.json();
    const text = body.ready
      ? `Serving ${versionLabel(body.model_version)}${body.device ? ` on ${body.device}` : ""}`
      : `Not ready: ${body.detail || "no model loaded"}`;
    // Set only on change: the line is a live region, and polls must not repeat it to screen readers.
    if (status.textContent !== text) status.textContent = text;
    status.classList.toggle("not-ready", !body.ready);
    ready = body.ready;
    if (followModels && body.ready && String(body.model_version) !== String(modelsInfo.served)) refreshModels();
  } catch {
    showMessage(status, "The server could not be reached.");
    status.classList.add("not-ready");
  }
  clearTimeout(statusTimer); // a call that overlapped this one may have set one already
  statusTimer = setTimeout(refreshServerStatus, ready ? POLL_IDLE_MS : 2000);
}

/** Replace a select's options after the first `keep`, keeping the chosen value when it is still offered. */
function setOptions(select, options, keep = 1) {
  const chosen = select.value;
  while (select.options.length > keep) select.remove(keep);
  for (const { value, label, disabled } of options) {
    const option = new Option(label, value);
    option.disabled = Boolean(disabled);
    select.add(option);
  }
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
}

function describeVersion(info) {
  const parts = [versionLabel(info.version)];
  if (info.preset) parts.push(info.preset);
  if (info.image_size) parts.push(`${info.image_size} px`);
  if (info.error) parts.push("cannot be loaded");
  return parts.join(" · ");
}

async function refreshModels() {
  try {
    const response = await api("models");
    modelsInfo = await response.json();
    showMessage($("#versions-error"), "");
  } catch (err) {
    showMessage($("#versions-error"), `Could not list the model versions: ${err.message}`);
    return;
  }
  // Newest first; the packaged default model last.
  const versions = [...modelsInfo.versions].sort((a, b) => {
    if (a.version === "default") return 1;
    if (b.version === "default") return -1;
    return b.version - a.version;
  });
  const options = versions.map((info) => ({ value: String(info.version), label: describeVersion(info) }));
  const modelSelect = $("#model");
  modelSelect.options[0].textContent =
    modelsInfo.served == null ? "Served version (none yet)" : `Served version (${versionLabel(modelsInfo.served)})`;
  setOptions(modelSelect, options);
  setOptions($("#job-init-from"), options);
  updateRenderSizes();
  renderVersionsTable(versions);
  refreshServerStatus({ followModels: false });
}

function chosenModelInfo() {
  const value = $("#model").value || String(modelsInfo.served ?? "");
  return modelsInfo.versions.find((info) => String(info.version) === value);
}

/** Render sizes the chosen model accepts: multiples of its own size (the server has the last word). */
function updateRenderSizes() {
  const select = $("#render-size");
  const info = chosenModelInfo();
  const size = info?.image_size;
  const own = info?.render_size ?? size;
  select.options[0].textContent = own ? `Model’s own size (${own} px)` : "Model’s own size";
  const sizes = new Set();
  if (size) {
    for (let k = 2; k <= 4; k++) sizes.add(size * k);
    for (let s = size * 2; s <= 1024; s *= 2) sizes.add(s);
  }
  const options = [...sizes].filter((s) => s <= 1024 && s !== own).sort((a, b) => a - b);
  setOptions(select, options.map((s) => ({ value: String(s), label: `${s} px` })));
}

function renderVersionsTable(versions) {
  const tbody = $("#versions tbody");
  tbody.replaceChildren();
  if (!versions.length) {
    const row = tbody.insertRow();
    const cell = row.insertCell();
    cell.colSpan = 10;
    cell.className = "hint";
    cell.textContent = "No published version yet: train one above.";
    return;
  }
  for (const info of versions) {
    const row = tbody.insertRow();
    row.dataset.version = String(info.version);
    if (info.served) row.classList.add("served");
    const header = document.createElement("th");
    header.scope = "row";
    header.textContent = info.version === "default" ? "default" : String(info.version);
    row.append(header);
    const validation = info.metrics?.validation || {};
    const status = info.error ? `error: ${info.error}` : info.served ? "served" : info.loaded ? "loaded" : "";
    const colourfulness =
      validation.colourfulness == null
        ? "–"
        : `${formatNumber(validation.colourfulness, 1)} (${formatNumber(validation.colourfulness_gt, 1)})`;
    const cells = [
      [info.preset || "–"],
      [info.image_size ? `${info.image_size} px` : "–"],
      [formatTime(info.created_at)],
      [status, info.error ? "error" : ""],
      [formatNumber(validation.ciede2000, 2), "num"],
      [formatNumber(validation.psnr, 2), "num"],
      [formatNumber(validation.ssim, 3), "num"],
      [colourfulness, "num"],
      [validation.images ?? "–", "num"],
    ];
    for (const [text, className] of cells) {
      const cell = row.insertCell();
      cell.textContent = String(text);
      if (className) cell.className = className;
    }
  }
}

// -- colorize ------------------------------------------------------------------------------------

let chosenFile = null;
let originalUrl = null;
let resultUrl = null;
let colorizeRequest = null;

function chooseFile(file) {
  if (!file) return;
  chosenFile = file;
  hints = []; // hints are points of one photograph
  selectedHint = -1;
  clearTimeout(hintTimer);
  $("#hints-panel").hidden = true; // until this photograph's result is back
  $("#file-name").textContent = `Chosen: ${file.name || "pasted image"}`;
  $("#colorize-button").disabled = false;
  if (originalUrl) URL.revokeObjectURL(originalUrl);
  originalUrl = URL.createObjectURL(file);
  colorize();
}

function fileStem(name) {
  const stem = (name || "photo").replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_");
  return stem || "photo";
}

async function colorize() {
  if (!chosenFile) return;
  colorizeRequest?.abort(); // the newest choice wins
  const request = new AbortController();
  colorizeRequest = request;
  const status = $("#colorize-status");
  const error = $("#colorize-error");
  const button = $("#colorize-button");
  showMessage(error, "");
  status.textContent = `Colorizing ${chosenFile.name || "the image"}…`;
  button.disabled = true;
  $("#result").setAttribute("aria-busy", "true");

  const format = $("#format").value;
  const params = new URLSearchParams({ format });
  if ($("#render-size").value) params.set("render_size", $("#render-size").value);
  if ($("#model").value) params.set("model", $("#model").value);
  const body = new FormData();
  body.append("image", chosenFile, chosenFile.name || "image");
  const hinted = hints.length > 0 && Boolean(chosenModelInfo()?.hints);
  if (hinted) body.append("hints", JSON.stringify(hints));
  const started = performance.now();
  try {
    const response = await api(`colorize?${params}`, { method: "POST", body, signal: request.signal });
    const blob = await response.blob();
    const version = response.headers.get("X-Model-Version") || "?";
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(blob);
    const colorized = $("#colorized");
    const original = $("#original");
    colorized.src = resultUrl;
    original.src = originalUrl;
    await Promise.all([colorized.decode(), original.decode().catch(() => {})]);
    if (request !== colorizeRequest) return;
    const seconds = (performance.now() - started) / 1000;
    $("#used-version").textContent = versionLabel(version);
    $("#result-size").textContent = `${colorized.naturalWidth} × ${colorized.naturalHeight} px`;
    $("#result-time").textContent = `${seconds.toFixed(1)} s`;
    const download = $("#download");
    download.href = resultUrl;
    const withHints = hinted ? `-${hints.length}hint${hints.length === 1 ? "" : "s"}` : "";
    const extension = FORMAT_EXTENSIONS[format] || format;
    download.download = `${fileStem(chosenFile.name)}-colorized-v${version}${withHints}.${extension}`;
    download.textContent = `Download ${download.download}`;
    $("#result").hidden = false;
    showHints(version);
    status.textContent = `Colorized with ${versionLabel(version)}${
      hinted ? ` and ${hints.length} colour hint${hints.length === 1 ? "" : "s"}` : ""
    } in ${seconds.toFixed(1)} s.`;
  } catch (err) {
    if (err.name === "AbortError" || request !== colorizeRequest) return;
    status.textContent = "";
    $("#result").hidden = true;
    showMessage(error, `Could not colorize ${chosenFile.name || "the image"}: ${err.message}`);
  } finally {
    if (request === colorizeRequest) {
      button.disabled = false;
      $("#result").removeAttribute("aria-busy");
    }
  }
}

function updateSlider() {
  const slider = $("#slider");
  const value = Number(slider.value);
  $("#colorized").style.clipPath = `inset(0 ${100 - value}% 0 0)`;
  $("#divider").style.left = `${value}%`;
  slider.setAttribute("aria-valuetext", `${value}% colorized, ${100 - value}% original`);
}

function setUpColorize() {
  const dropZone = $("#drop-zone");
  const fileInput = $("#file");
  fileInput.addEventListener("change", () => chooseFile(fileInput.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    dropZone.addEventListener(type, (event) => {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    dropZone.addEventListener(type, () => dropZone.classList.remove("dragging"));
  }
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    chooseFile(event.dataTransfer?.files?.[0]);
  });
  document.addEventListener("paste", (event) => {
    if (currentView() !== "colorize") return;
    const item = [...(event.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
    if (item) chooseFile(item.getAsFile());
  });
  $("#colorize-form").addEventListener("submit", (event) => {
    event.preventDefault();
    colorize();
  });
  $("#model").addEventListener("change", updateRenderSizes);

  // The slider is the control; dragging across the picture moves it too.
  const slider = $("#slider");
  slider.addEventListener("input", updateSlider);
  const compare = $("#compare");
  const follow = (event) => {
    const box = compare.getBoundingClientRect();
    slider.value = String(Math.round(((event.clientX - box.left) / box.width) * 100));
    updateSlider();
  };
  // Without this, Chromium starts a native drag of the image (dragstart, then pointercancel).
  compare.addEventListener("dragstart", (event) => event.preventDefault());
  compare.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    compare.setPointerCapture(event.pointerId);
    follow(event);
  });
  compare.addEventListener("pointermove", (event) => {
    if (compare.hasPointerCapture(event.pointerId)) follow(event);
  });
  updateSlider();
}

// -- colour hints (a model that takes them) ------------------------------------------------------

let hints = []; // {x, y, color, radius}: pixels of the photograph as it is seen
let selectedHint = -1;
let hintTimer = null;

/** The hint panel, for a model that takes hints; the colorized photograph is what hints go on. */
function showHints(version) {
  const info = modelsInfo.versions.find((v) => String(v.version) === String(version));
  const panel = $("#hints-panel");
  panel.hidden = !info?.hints;
  if (panel.hidden) return;
  $("#hint-image").src = resultUrl;
  renderHints();
}

function recolorizeSoon(delay = 0) {
  clearTimeout(hintTimer);
  hintTimer = setTimeout(colorize, delay);
}

/** The colour of the colorized photograph at (x, y), as #rrggbb: what the model predicts there. */
function predictedColor(x, y) {
  const img = $("#colorized"); // decoded already (the hint board's copy may still be loading)
  const canvas = document.createElement("canvas");
  canvas.width = 1;
  canvas.height = 1;
  const context = canvas.getContext("2d");
  context.drawImage(img, Math.floor(x), Math.floor(y), 1, 1, 0, 0, 1, 1);
  const [r, g, b] = context.getImageData(0, 0, 1, 1).data;
  return `#${[r, g, b].map((v) => v.toString(16).padStart(2, "0")).join("")}`;
}

function boardPoint(event) {
  const img = $("#hint-image");
  const box = img.getBoundingClientRect();
  const fx = Math.min(Math.max((event.clientX - box.left) / box.width, 0), 0.9999);
  const fy = Math.min(Math.max((event.clientY - box.top) / box.height, 0), 0.9999);
  return { x: Math.floor(fx * img.naturalWidth), y: Math.floor(fy * img.naturalHeight) };
}

const MAX_HINTS = 200; // the API's limit

function addHint(x, y) {
  const img = $("#hint-image");
  if (hints.length >= MAX_HINTS) {
    $("#hints-status").textContent = `At most ${MAX_HINTS} hints: move or delete one first.`;
    return;
  }
  const radius = Math.max(1, Math.round(Math.min(img.naturalWidth, img.naturalHeight) / 100));
  hints.push({ x, y, color: predictedColor(x, y), radius });
  selectHint(hints.length - 1);
  recolorizeSoon();
}

function selectHint(index) {
  selectedHint = index;
  renderHints();
  $(`.hint-marker[data-index="${index}"]`)?.focus();
}

function removeHint(index) {
  if (index < 0 || index >= hints.length) return;
  hints.splice(index, 1);
  selectedHint = hints.length ? Math.min(index, hints.length - 1) : -1;
  renderHints();
  recolorizeSoon();
}

function renderHints() {
  const board = $("#hint-board");
  const img = $("#hint-image");
  const hadFocus = document.activeElement?.classList.contains("hint-marker");
  for (const marker of board.querySelectorAll(".hint-marker")) marker.remove();
  hints.forEach((hint, index) => {
    const marker = document.createElement("button");
    marker.type = "button";
    marker.className = "hint-marker";
    marker.dataset.index = String(index);
    marker.style.left = `${((hint.x + 0.5) / (img.naturalWidth || 1)) * 100}%`;
    marker.style.top = `${((hint.y + 0.5) / (img.naturalHeight || 1)) * 100}%`;
    marker.style.background = hint.color;
    marker.setAttribute("aria-pressed", String(index === selectedHint));
    marker.setAttribute("aria-label", `Hint ${index + 1}: ${hint.color} at ${hint.x}, ${hint.y}`);
    board.append(marker);
  });
  // a new result redraws the markers: keyboard focus stays on the selected one
  if (hadFocus) $(`.hint-marker[data-index="${selectedHint}"]`)?.focus();
  const selected = hints[selectedHint];
  const picker = $("#hint-color");
  picker.disabled = !selected;
  if (selected) picker.value = selected.color;
  $("#hint-delete").disabled = !selected;
  $("#hints-clear").disabled = hints.length === 0;
  const link = $("#hints-download");
  link.hidden = hints.length === 0;
  if (hints.length) {
    if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([JSON.stringify(hints, null, 2)], { type: "application/json" }));
    link.download = `${fileStem(chosenFile?.name)}-hints.json`;
  }
  $("#hints-status").textContent = hints.length
    ? `${hints.length} hint${hints.length === 1 ? "" : "s"}${selected ? `; hint ${selectedHint + 1} selected` : ""}.`
    : "No hints: the model’s own colours.";
}

function setUpHints() {
  const board = $("#hint-board");
  let dragging = null; // {index, moved}
  board.addEventListener("dragstart", (event) => event.preventDefault());
  board.addEventListener("pointerdown", (event) => {
    const marker = event.target.closest(".hint-marker");
    event.preventDefault();
    if (marker) {
      dragging = { index: Number(marker.dataset.index), moved: false };
      board.setPointerCapture(event.pointerId);
      selectHint(dragging.index);
    } else {
      const point = boardPoint(event);
      addHint(point.x, point.y);
    }
  });
  board.addEventListener("pointermove", (event) => {
    if (!dragging || !board.hasPointerCapture(event.pointerId)) return;
    Object.assign(hints[dragging.index], boardPoint(event));
    dragging.moved = true;
    renderHints();
  });
  board.addEventListener("pointerup", () => {
    if (dragging?.moved) recolorizeSoon();
    dragging = null;
  });
  board.addEventListener("keydown", (event) => {
    const marker = event.target.closest(".hint-marker");
    const img = $("#hint-image");
    if (!marker) {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        addHint(Math.floor(img.naturalWidth / 2), Math.floor(img.naturalHeight / 2));
      }
      return;
    }
    const index = Number(marker.dataset.index);
    const steps = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[event.key];
    if (steps) {
      event.preventDefault();
      const stride = Math.max(1, Math.round((Math.min(img.naturalWidth, img.naturalHeight) * (event.shiftKey ? 10 : 1)) / 100));
      const hint = hints[index];
      hint.x = Math.min(Math.max(hint.x + steps[0] * stride, 0), img.naturalWidth - 1);
      hint.y = Math.min(Math.max(hint.y + steps[1] * stride, 0), img.naturalHeight - 1);
      selectHint(index);
      recolorizeSoon(400); // a few key presses in a row make one request
    } else if (event.key === "Delete" || event.key === "Backspace") {
      event.preventDefault();
      removeHint(index);
      if (selectedHint >= 0) selectHint(selectedHint);
      else board.focus();
    }
  });
  $("#hint-color").addEventListener("change", (event) => {
    if (!hints[selectedHint]) return;
    hints[selectedHint].color = event.target.value;
    renderHints();
    recolorizeSoon();
  });
  $("#hint-delete").addEventListener("click", () => removeHint(selectedHint));
  $("#hints-clear").addEventListener("click", () => {
    hints = [];
    selectedHint = -1;
    renderHints();
    recolorizeSoon();
  });
}

// -- datasets (when this server has GET /datasets) -----------------------------------------------

const DATASET_HINTS = {
  text: "A folder of colour photographs in the server’s datasets directory.",
  empty: "The server has no dataset yet: upload one below, or type a folder name.",
  menu: "Uploaded datasets and folders in the server’s datasets directory.",
};

/** The dataset field as a menu of `datasets` (name, images), or as free text when there are none. */
function setDatasetChoices(datasets, hint) {
  const current = $("#job-dataset");
  const chosen = current.value;
  let field = current;
  if (datasets.length && current.tagName !== "SELECT") {
    field = document.createElement("select");
  } else if (!datasets.length && current.tagName !== "INPUT") {
    field = document.createElement("input");
    Object.assign(field, { autocomplete: "off", spellcheck: false });
  }
  if (field !== current) {
    for (const name of ["id", "name", "required", "aria-describedby"]) {
      if (current.hasAttribute(name)) field.setAttribute(name, current.getAttribute(name));
    }
    current.replaceWith(field);
  }
  if (field.tagName === "SELECT") {
    field.replaceChildren(
      ...datasets.map((d) => new Option(d.images == null ? d.name : `${d.name} · ${d.images} images`, d.name)),
    );
  }
  if (datasets.some((d) => d.name === chosen) || field.tagName === "INPUT") field.value = chosen;
  $("#job-dataset-hint").textContent = hint;
}

async function refreshDatasets() {
  let datasets;
  try {
    const response = await fetch("datasets", { headers: authHeaders(), cache: "no-store" });
    if (response.status !== 200) {
      // No dataset API on this server (404), or no key yet (401): a name typed by hand still works.
      setDatasetChoices([], DATASET_HINTS.text);
      $("#dataset-upload-panel").hidden = response.status === 404 || response.status === 405;
      return;
    }
    const body = await response.json();
    datasets = (Array.isArray(body) ? body : body.datasets || [])
      .map((item) => (typeof item === "string" ? { name: item } : item))
      .filter((item) => item && typeof item.name === "string");
  } catch {
    return; // unreachable server: leave the field as it is
  }
  setDatasetChoices(datasets, datasets.length ? DATASET_HINTS.menu : DATASET_HINTS.empty);
  $("#dataset-upload-panel").hidden = false;
}

function authHeaders() {
  return apiKey() ? { "X-API-Key": apiKey() } : {};
}

async function uploadDataset(event) {
  event.preventDefault();
  const name = $("#dataset-name");
  const archive = $("#dataset-archive");
  const status = $("#dataset-status");
  const error = $("#dataset-error");
  showMessage(error, "");
  if (!name.value.trim() || !archive.files[0]) {
    showMessage(error, "Give the dataset a name and choose an archive (zip or tar) of colour photographs.");
    (name.value.trim() ? archive : name).focus();
    return;
  }
  const body = new FormData();
  body.append("name", name.value.trim());
  body.append("archive", archive.files[0]);
  status.textContent = `Uploading ${archive.files[0].name}…`;
  try {
    const response = await api("datasets", { method: "POST", body, auth: true });
    const dataset = await response.json();
    const skipped = dataset.skipped ? `, ${dataset.skipped} files skipped` : "";
    await refreshDatasets();
    $("#job-dataset").value = dataset.name;
    event.target.reset();
    status.textContent = `Dataset ${dataset.name} uploaded: ${dataset.images} images${skipped}.`;
  } catch (err) {
    status.textContent = "";
    showMessage(error, `Could not upload the dataset: ${err.message}`);
  }
}

// -- training jobs -------------------------------------------------------------------------------

const jobElements = new Map();
let pollTimer = null;
let publishedSeen = "";

function stopJobsPolling() {
  clearTimeout(pollTimer);
  pollTimer = null;
}

async function refreshJobs() {
  stopJobsPolling();
  let jobs;
  try {
    const response = await api("jobs", { auth: true });
    jobs = await response.json();
    showMessage($("#jobs-error"), "");
  } catch (err) {
    showMessage($("#jobs-error"), `Could not list the training jobs: ${err.message}`);
    jobs = null;
  }
  if (jobs) {
    renderJobs(jobs);
    // A job published a version: the versions table and the model menus need it.
    const published = jobs.map((job) => job.published_versions.join(",")).join(";");
    if (published !== publishedSeen) {
      publishedSeen = published;
      refreshModels();
    }
  }
  if (currentView() === "training") {
    const active = jobs?.some((job) => ACTIVE_STATES.has(job.state));
    if (active) refreshServerStatus(); // a job's new version is served a moment after it is published
    pollTimer = setTimeout(refreshJobs, active ? POLL_ACTIVE_MS : POLL_IDLE_MS);
  }
}

function renderJobs(jobs) {
  const list = $("#jobs");
  $("#jobs-empty").hidden = jobs.length > 0;
  const seen = new Set();
  jobs.forEach((job, index) => {
    seen.add(job.id);
    let element = jobElements.get(job.id);
    if (!element) {
      element = $("#job-template").content.firstElementChild.cloneNode(true);
      element.dataset.jobId = job.id;
      $(".job-cancel", element).addEventListener("click", () => cancelJob(job.id, element));
      jobElements.set(job.id, element);
    }
    // Moved only when out of place, so a focused Cancel button keeps its focus.
    if (list.children[index] !== element) list.insertBefore(element, list.children[index] || null);
    updateJob(element, job);
  });
  for (const [id, element] of jobElements) {
    if (!seen.has(id)) {
      element.remove();
      jobElements.delete(id);
    }
  }
}

function describeConfig(config) {
  const parts = [`dataset ${config.dataset}`, config.preset, `${config.image_size} px`];
  if (config.width) parts.push(`width ${config.width}`);
  if (config.steps) parts.push(`${config.steps} steps`);
  if (config.epochs) parts.push(`${config.epochs} epochs`);
  if (config.init_from != null) parts.push(`from ${versionLabel(config.init_from)}`);
  return parts.join(" · ");
}

function updateJob(element, job) {
  const shortId = job.id.slice(0, 8);
  element.dataset.state = job.state;
  $(".job-title", element).textContent = `Job ${shortId}`;
  $(".job-title", element).title = job.id;
  const state = $(".job-state", element);
  state.textContent = job.state;
  state.className = `badge job-state state-${job.state}`;
  $(".job-config", element).textContent = `${describeConfig(job.config)} · started ${formatTime(job.started_at || job.created_at)}`;

  const step = job.progress?.step ?? 0;
  const total = job.progress?.total;
  const progress = $(".job-progress", element);
  progress.max = total || 1;
  progress.value = total ? step : 0;
  progress.dataset.step = String(step);
  let text;
  if (job.state === "queued") text = "Waiting for a worker";
  else if (total) text = `Step ${step} / ${total} (${Math.floor((100 * step) / total)}%)`;
  else text = `Step ${step}`;
  $(".job-progress-text", element).textContent = text;

  const losses = Object.entries(job.losses || {})
    .filter(([, value]) => value != null)
    .map(([name, value]) => `${name} ${Number(value).toPrecision(3)}`);
  $(".job-losses", element).textContent = losses.length ? losses.join(" · ") : "–";
  let eta = "–";
  if (job.state === "running" && job.eta_seconds != null) eta = `about ${formatDuration(job.eta_seconds)}`;
  else if (job.finished_at && job.started_at) {
    const took = formatDuration(job.finished_at - job.started_at);
    eta = job.state === "succeeded" ? `done, took ${took}` : `${job.state} after ${took}`;
  }
  $(".job-eta", element).textContent = eta;
  $(".job-published", element).textContent = job.published_versions.length
    ? job.published_versions.map((v) => `v${v}`).join(", ")
    : "–";
  showMessage($(".job-error", element), job.error ? `Error: ${job.error}` : "");

  const cancel = $(".job-cancel", element);
  const cancellable = ACTIVE_STATES.has(job.state);
  cancel.hidden = !cancellable;
  if (!cancellable) cancel.disabled = false;
  cancel.setAttribute("aria-label", `Cancel job ${shortId}`);
  updateSample(element, job);
}

/** Fetch the newest sample plot when a new one may exist (one request at a time per job). */
async function updateSample(element, job) {
  const every = job.config.sample_every || 1;
  const step = job.progress?.step ?? 0;
  const key = `${Math.floor(step / every)}:${job.state}`;
  if (step === 0 || element.dataset.sampleKey === key || element.dataset.sampleLoading) return;
  element.dataset.sampleLoading = "1";
  const img = $(".job-sample-img", element);
  const caption = $(".job-sample-caption", element);
  try {
    const response = await api(`jobs/${encodeURIComponent(job.id)}/samples/latest`, { auth: true });
    const url = URL.createObjectURL(await response.blob());
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = url;
    img.alt = `Newest sample plot of job ${job.id.slice(0, 8)} (inputs, outputs and originals) near step ${step}`;
    img.hidden = false;
    caption.textContent = `Newest sample plot, near step ${step}.`;
    element.dataset.sampleKey = key;
  } catch (err) {
    if (err.status === 404) {
      caption.textContent = `No sample plot yet (the first comes after ${every} steps).`;
      element.dataset.sampleKey = key;
    } else {
      caption.textContent = `Could not load the sample plot: ${err.message}`;
    }
  } finally {
    delete element.dataset.sampleLoading;
  }
}

async function cancelJob(id, element) {
  const button = $(".job-cancel", element);
  button.disabled = true;
  button.textContent = "Cancelling…";
  try {
    const response = await api(`jobs/${encodeURIComponent(id)}/cancel`, { method: "POST", auth: true });
    updateJob(element, await response.json());
    $("#job-status").textContent = `Job ${id.slice(0, 8)} is being cancelled.`;
  } catch (err) {
    showMessage($("#jobs-error"), `Could not cancel job ${id.slice(0, 8)}: ${err.message}`);
    button.disabled = false;
  } finally {
    button.textContent = "Cancel";
  }
  refreshJobs();
}

const OPTIONAL_NUMBERS = ["width", "batch_size", "sample_every", "publish_every", "checkpoint_every", "max_seconds", "seed"];

async function submitJob(event) {
  event.preventDefault();
  const form = event.target;
  const status = $("#job-status");
  const error = $("#job-error");
  showMessage(error, "");
  const dataset = $("#job-dataset");
  const steps = $("#job-steps");
  for (const field of [dataset, steps]) field.removeAttribute("aria-invalid");
  if (!dataset.value.trim()) {
    dataset.setAttribute("aria-invalid", "true");
    showMessage(error, "Give the dataset: the name of a folder of colour photographs on the server.");
    dataset.focus();
    return;
  }
  if (!(Number(steps.value) >= 1)) {
    steps.setAttribute("aria-invalid", "true");
    showMessage(error, "Steps must be a whole number of at least 1.");
    steps.focus();
    return;
  }
  const config = {
    dataset: dataset.value.trim(),
    preset: form.elements.preset.value,
    steps: Number(steps.value),
    image_size: Number(form.elements.image_size.value),
  };
  const initFrom = form.elements.init_from.value;
  if (initFrom) config.init_from = initFrom === "default" ? "default" : Number(initFrom);
  for (const name of OPTIONAL_NUMBERS) {
    const value = form.elements[name].value.trim();
    if (value !== "") config[name] = Number(value);
  }
  const button = $("#job-submit");
  button.disabled = true;
  status.textContent = "Starting the job…";
  try {
    const response = await api("jobs", { method: "POST", json: config, auth: true });
    const job = await response.json();
    status.textContent = `Job ${job.id.slice(0, 8)} is ${job.state}.`;
  } catch (err) {
    status.textContent = "";
    showMessage(error, `Could not start the job: ${err.message}`);
  } finally {
    button.disabled = false;
  }
  refreshJobs();
}

/** Starting from a version needs its preset, size and width: copy them into the form. */
function matchInitFrom() {
  const value = $("#job-init-from").value;
  const info = modelsInfo.versions.find((v) => String(v.version) === value);
  if (!info) return;
  if (info.preset) $("#job-preset").value = info.preset;
  if (info.image_size) $("#job-image-size").value = String(info.image_size);
  const width = info.metadata?.width ?? info.metadata?.config?.width;
  if (width) $("#job-width").value = String(width);
}

// -- start ---------------------------------------------------------------------------------------

function setUp() {
  const keyField = $("#api-key");
  keyField.value = apiKey();
  const saveKey = () => {
    const key = keyField.value.trim();
    if (key === apiKey()) return;
    if (key) sessionStorage.setItem(API_KEY_STORAGE, key);
    else sessionStorage.removeItem(API_KEY_STORAGE);
    if (currentView() === "training") {
      refreshDatasets();
      refreshJobs();
    }
  };
  keyField.addEventListener("change", saveKey);
  // Enter in the key field saves it; it must not submit (and reload) the page.
  $("#api-key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveKey();
  });
  setUpColorize();
  setUpHints();
  $("#job-form").addEventListener("submit", submitJob);
  $("#job-init-from").addEventListener("change", matchInitFrom);
  $("#dataset-form").addEventListener("submit", uploadDataset);
  $("#jobs-refresh").addEventListener("click", refreshJobs);
  window.addEventListener("hashchange", showView);
  refreshModels();
  showView();
}

setUp();
