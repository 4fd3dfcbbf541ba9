// imagegen playground: submit a job, watch it, see its images. No framework, no build step.
// The API: POST /generate, GET /generate/{id}, DELETE /generate/{id}, GET /generate (job list).
// Fields a deployment's API does not send yet (progress, the job list) are simply not shown.
"use strict";

const $ = (id) => document.getElementById(id);
const config = window.IMAGEGEN_CONFIG || {};
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"]);
const POLL_MS = 700;
// The words of each stage come from the API's OpenAPI document (the Stage enum's
// x-enum-descriptions), the backends, models and sizes from GET /models: the page copies neither.
let STAGES = {};
const STATUS_STAGE = { SUCCEEDED: "succeeded", FAILED: "failed", TIMED_OUT: "timed_out",
  ABORTED: "cancelled" };
let catalogue = null;
// An API field path -> the input it belongs to (the error paragraph says data-error-for).
const INPUT_FOR_FIELD = { prompt: "prompt", negative_prompt: "negative-prompt", backend: "backend",
  model_id: "model", width: "size", height: "size", size: "size", seed: "seed",
  num_images: "num-images", "x-api-key": "api-key", api_url: "api-url" };

// --- Settings: kept in this browser only -------------------------------------------------
const store = {
  get(name) { try { return localStorage.getItem("imagegen." + name) || ""; } catch { return ""; } },
  set(name, value) {
    try { value ? localStorage.setItem("imagegen." + name, value) : localStorage.removeItem("imagegen." + name); } catch { /* private mode: this session only */ }
  },
};

function apiBase() {
  const base = store.get("apiUrl") || config.apiUrl || "./";
  return new URL(base, location.href).href.replace(/\/+$/, "");
}

class ApiFailure extends Error {
  constructor(status, error, retryAfter) {
    super(error.message);
    this.status = status;
    this.error = error;
    this.retryAfter = retryAfter;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const key = store.get("apiKey");
  if (key) headers["x-api-key"] = key;
  let response;
  try {
    response = await fetch(apiBase() + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
    });
  } catch (error) {
    throw new ApiFailure(0, { code: "NETWORK", message: `The API at ${apiBase()} did not answer ` +
      `(${error.message}). Check the API URL; a page on another origin also needs that origin ` +
      "in the stack's CorsAllowedOrigins." });
  }
  let data = null;
  try { data = await response.json(); } catch { /* not JSON: described below */ }
  if (!response.ok) {
    const error = (data && data.error) || { code: `HTTP_${response.status}`,
      message: (data && data.message) || `${response.status} ${response.statusText}` };
    throw new ApiFailure(response.status, error, Number(response.headers.get("Retry-After")) || 0);
  }
  return { status: response.status, data };
}

// --- Errors next to their fields ----------------------------------------------------------
function clearErrors() {
  for (const p of document.querySelectorAll(".error")) { p.hidden = true; p.textContent = ""; }
  for (const input of document.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

function errorSlot(field) {
  return [...document.querySelectorAll("[data-error-for]")]
    .find((p) => p.dataset.errorFor.split(" ").includes(field));
}

function say(slot, text) {
  slot.textContent = slot.hidden ? text : `${slot.textContent} ${text}`;
  slot.hidden = false;
}

function showApiError(failure, fallbackSlot) {
  const { error, status } = failure;
  let first = null;
  for (const field of error.fields || []) {
    const slot = errorSlot(field.field);
    if (!slot) { say(fallbackSlot, `${field.field}: ${field.message}`); continue; }
    say(slot, `${field.message} (${field.rule})`);
    const input = $(INPUT_FOR_FIELD[field.field]);
    if (input) { input.setAttribute("aria-invalid", "true"); first = first || input; }
  }
  if (!error.fields || !error.fields.length) {
    if (status === 401 || status === 403) {
      $("settings").open = true;
      say(errorSlot("x-api-key"), `${error.message} (${status} ${error.code})`);
      $("api-key").setAttribute("aria-invalid", "true");
    }
    say(fallbackSlot, `${error.message} (${status ? status + " " : ""}${error.code})`);
  } else {
    say(fallbackSlot, error.message);
  }
  if (first) first.focus();
}

// --- Submitting ---------------------------------------------------------------------------
function requestBody() {
  const body = { prompt: $("prompt").value };
  const optional = { negative_prompt: $("negative-prompt").value.trim(), backend: $("backend").value,
    model_id: $("model").disabled ? "" : $("model").value.trim(), output_format: $("format").value };
  for (const [name, value] of Object.entries(optional)) if (value) body[name] = value;
  const size = $("size").value.trim();
  if (size) {
    const match = /^(\d+)\s*[x×]\s*(\d+)$/i.exec(size);
    if (!match) return { sizeError: "Write the size as WIDTHxHEIGHT, e.g. 1024x1024." };
    body.width = Number(match[1]);
    body.height = Number(match[2]);
  }
  for (const [name, id] of [["seed", "seed"], ["num_images", "num-images"], ["steps", "steps"],
    ["guidance_scale", "guidance"]]) {
    const input = $(id);
    if (input.disabled) continue;
    if (input.value !== "") body[name] = Number(input.value);
    else if (input.validity.badInput) return { [name]: "Must be a number." };
  }
  return { body };
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const { body, sizeError, seed, num_images } = requestBody();
  if (!body) {
    const [field, message] = sizeError ? ["size", sizeError] : seed ? ["seed", seed] : ["num_images", num_images];
    say(errorSlot(field), message);
    $(INPUT_FOR_FIELD[field]).setAttribute("aria-invalid", "true");
    $(INPUT_FOR_FIELD[field]).focus();
    return;
  }
  const button = $("submit");
  button.disabled = true;
  try {
    const { data } = await api("POST", "/generate", body);
    remember({ execution_id: data.execution_id, prompt: body.prompt, status: "RUNNING",
      submitted_at: new Date().toISOString(), num_images: body.num_images || 1 });
    openJob(data.execution_id, { focus: false });
  } catch (failure) {
    if (!(failure instanceof ApiFailure)) throw failure;
    showApiError(failure, $("form-error"));
  } finally {
    button.disabled = false;
  }
}

// --- Watching a job -------------------------------------------------------------------------
let current = null;

function openJob(id, { focus = true } = {}) {
  if (current) clearTimeout(current.timer);
  current = { id, startedAt: Date.now(), images: new Set(), ended: false, timer: 0, lastStage: "" };
  history.replaceState(null, "", "#job=" + encodeURIComponent(id));
  $("job").hidden = false;
  $("job-id").textContent = id;
  $("images").replaceChildren();
  $("job-error").hidden = true;
  $("job-cost").textContent = "–";
  $("job-backend").textContent = "–";
  $("job-stage").textContent = "Submitted";
  setProgress(null);
  $("cancel").hidden = false;
  $("cancel").disabled = false;
  if (focus) $("job-title").focus();
  poll(current);
}

async function poll(job) {
  if (job !== current) return;
  let delay = POLL_MS;
  try {
    const { data } = await api("GET", "/generate/" + encodeURIComponent(job.id));
    if (job !== current) return;
    render(job, data);
    if (TERMINAL.has(data.status)) {
      job.ended = true;
      job.status = data.status;
      remember({ execution_id: job.id, status: data.status });
      loadJobs();
      return;
    }
  } catch (failure) {
    if (!(failure instanceof ApiFailure)) throw failure;
    $("job-error").hidden = true;
    showApiError(failure, $("job-error"));
    if (failure.status === 404) { job.ended = true; $("cancel").hidden = true; return; }
    delay = Math.max(failure.retryAfter * 1000, 3000);
  }
  job.timer = setTimeout(() => poll(job), delay);
}

function render(job, data) {
  const running = data.status === "RUNNING";
  const stage = data.stage || STATUS_STAGE[data.status] || (data.status === "RUNNING" ? "" : data.status);
  let stageText = STAGES[stage] || stage || "Running";
  if (stage === "queued" && data.queue_position != null) {
    stageText += data.queue_position === 0 ? ": next in line" : `: ${data.queue_position} ahead`;
  }
  if (running && job.cancelling) stageText = `Cancelling (${stageText.toLowerCase()})`;
  if (stageText !== job.lastStage) { $("job-stage").textContent = stageText; job.lastStage = stageText; }
  setProgress(data.progress, data.status);
  $("job-backend").textContent = data.backend || "–";
  if (data.cost) {
    $("job-cost").textContent = `$${data.cost.usd.toFixed(data.cost.usd < 0.01 ? 6 : 4)}`;
    $("job-cost").title = data.cost.basis;
  }
  if (data.submitted_at) job.startedAt = Date.parse(data.submitted_at);
  showElapsed(job, running ? Date.now() : Date.parse(data.updated_at || "") || Date.now());
  $("cancel").hidden = !running;
  if (data.error) { $("job-error").hidden = false; $("job-error").textContent = `${data.error.code}: ${data.error.message}`; }
  for (const image of data.images || []) addImage(job, image);
  for (const failed of data.failed_images || []) addFailedImage(job, failed);
}

function setProgress(progress, status) {
  const bar = $("job-progress");
  const label = $("job-progress-label");
  if (progress) {
    bar.value = progress.percent;
    const unit = progress.unit === "images" ? "image" : "step";
    let text = `${unit} ${progress.step} of ${progress.steps} (${Math.round(progress.percent)}%)`;
    if (progress.eta_seconds != null && status === "RUNNING") text += `, about ${Math.ceil(progress.eta_seconds)} s left`;
    label.textContent = text;
  } else if (status === "SUCCEEDED") {
    bar.value = 100;
    label.textContent = "done";
  } else if (status && status !== "RUNNING") {
    bar.value = 0;
    label.textContent = "";
  } else {
    bar.removeAttribute("value"); // indeterminate until the API reports steps
    label.textContent = "";
  }
}

function seedLine(seed) {
  const caption = document.createElement("figcaption");
  if (seed == null) return caption;
  caption.append(`seed ${seed} `);
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-seed";
  copy.textContent = "Copy seed";
  copy.setAttribute("aria-label", `Copy seed ${seed} into the form`);
  copy.addEventListener("click", () => copySeed(seed, copy));
  caption.append(copy);
  return caption;
}

function addImage(job, image) {
  const key = image.url.split("?")[0]; // the URL is re-signed at every read: the object stays
  if (job.images.has(key)) return;
  job.images.add(key);
  const img = document.createElement("img");
  img.src = image.url;
  img.width = image.width;
  img.height = image.height;
  img.alt = `Generated image, ${image.width}x${image.height}` + (image.seed == null ? "" : `, seed ${image.seed}`);
  img.decoding = "async";
  const figure = document.createElement("figure");
  figure.append(img, seedLine(image.seed));
  const item = document.createElement("li");
  item.append(figure);
  $("images").append(item);
}

function addFailedImage(job, failed) {
  const key = "failed:" + failed.index;
  if (job.images.has(key)) return;
  job.images.add(key);
  const filtered = failed.error.code === "CONTENT_FILTERED";
  const box = document.createElement("div");
  box.className = "failed-box";
  box.textContent = filtered ? "Filtered" : "Failed";
  const reason = document.createElement("p");
  reason.textContent = `Image ${failed.index + 1}: ${failed.error.code}, ${failed.error.message}`;
  const figure = document.createElement("figure");
  figure.className = "failed";
  figure.append(box, reason, seedLine(failed.seed));
  const item = document.createElement("li");
  item.append(figure);
  $("images").append(item);
}

async function copySeed(seed, button) {
  $("seed").value = String(seed);
  let copied = false;
  try { await navigator.clipboard.writeText(String(seed)); copied = true; } catch { /* no permission: the form has it */ }
  button.textContent = copied ? "Copied" : "In the form";
  setTimeout(() => { button.textContent = "Copy seed"; }, 1500);
}

async function cancel() {
  if (!current) return;
  const job = current;
  const button = $("cancel");
  button.disabled = true;
  try {
    await api("DELETE", "/generate/" + encodeURIComponent(job.id));
    job.cancelling = true; // shown from the next read on, until the job has ended
  } catch (failure) {
    if (!(failure instanceof ApiFailure)) throw failure;
    showApiError(failure, $("job-error"));
    button.disabled = false;
  }
}

function showElapsed(job, now) {
  $("job-elapsed").textContent = `${Math.max(0, (now - job.startedAt) / 1000).toFixed(1)} s`;
}

setInterval(() => { if (current && !current.ended) showElapsed(current, Date.now()); }, 1000);

// --- Recent jobs: GET /generate, else the ones this browser submitted ----------------------
function localJobs() {
  try { return JSON.parse(store.get("jobs") || "[]"); } catch { return []; }
}

function remember(job) {
  const jobs = localJobs();
  const known = jobs.find((j) => j.execution_id === job.execution_id);
  if (known) Object.assign(known, job); else jobs.unshift(job);
  store.set("jobs", JSON.stringify(jobs.slice(0, 20)));
}

let nextToken = null;

async function loadJobs(more = false) {
  const list = $("jobs");
  const note = $("history-note");
  let jobs;
  try {
    const query = "?limit=10" + (more && nextToken ? "&next_token=" + encodeURIComponent(nextToken) : "");
    const { data } = await api("GET", "/generate" + query);
    jobs = data.jobs || [];
    nextToken = data.next_token || null;
    note.textContent = "";
  } catch (failure) {
    if (!(failure instanceof ApiFailure)) throw failure;
    jobs = localJobs();
    nextToken = null;
    note.textContent = [403, 404, 405].includes(failure.status) && !failure.error.fields
      ? "This API has no job list (GET /generate): showing the jobs submitted from this browser."
      : `The job list could not be read: ${failure.error.message}. Showing this browser's jobs.`;
  }
  if (!more) list.replaceChildren();
  for (const job of jobs) list.append(jobRow(job));
  if (!list.children.length) note.textContent = note.textContent || "No jobs yet.";
  $("more").hidden = !nextToken;
}

function jobRow(job) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "job-row";
  const prompt = document.createElement("span");
  prompt.className = "job-prompt";
  prompt.textContent = job.prompt || job.execution_id;
  const meta = document.createElement("span");
  meta.className = "job-meta";
  const when = job.submitted_at ? new Date(job.submitted_at).toLocaleString() : "";
  // The list can trail the job by a moment (its record is written from events): an ended
  // status wins over the stage, and the job on screen knows best.
  const status = current && current.id === job.execution_id && current.status || job.status;
  const name = TERMINAL.has(status) ? STATUS_STAGE[status] : job.stage || status;
  const stage = STAGES[name] || name;
  meta.textContent = [stage, job.num_images ? `${job.num_images} image(s)` : "", when,
    job.cost ? `$${job.cost.usd.toFixed(4)}` : ""].filter(Boolean).join(" · ");
  button.append(prompt, meta);
  button.setAttribute("aria-label", `Open job: ${prompt.textContent}, ${meta.textContent}`);
  button.addEventListener("click", () => openJob(job.execution_id));
  const item = document.createElement("li");
  item.append(button);
  return item;
}

// --- What the deployment offers -------------------------------------------------------------
async function loadStageWords() {
  try {
    const { data } = await api("GET", "/openapi.json");
    const stage = data.components.schemas.Stage;
    STAGES = Object.fromEntries(stage.enum.map((name, i) => [name, stage["x-enum-descriptions"][i]]));
  } catch (failure) {
    if (!(failure instanceof ApiFailure)) throw failure; // the stages' own names stand in
  }
}

function options(list, values) {
  list.replaceChildren(...values.map((value) => Object.assign(document.createElement("option"), { value })));
}

function offerFor(backend) {
  const backends = catalogue ? catalogue.backends : [];
  return backends.find((offer) => offer.backend === backend) || backends.find((offer) => offer.default);
}

function showOffer() {
  const offer = offerFor($("backend").value);
  if (!offer) return;
  const model = offer.models.find((m) => m.default);
  options($("model-suggestions"), offer.backend === "bedrock" ? offer.models.map((m) => m.model_id) : []);
  $("model").placeholder = offer.backend === "bedrock" && model ? model.model_id : "the GPU service's model";
  $("model").disabled = offer.backend !== "bedrock";
  options($("size-suggestions"), offer.sizes);
  $("size").placeholder = offer.default_size;
  // The controls the model takes (GET /models): the others are disabled, never sent.
  const takes = model ? model.takes : [];
  for (const [id, field, hint] of [["steps", "steps", model && model.default_steps],
    ["guidance", "guidance_scale", model && model.default_guidance_scale]]) {
    const input = $(id);
    input.disabled = !takes.includes(field);
    input.placeholder = input.disabled ? "not taken" : `default ${hint ?? ""}`.trim();
  }
  if (model && model.max_steps) $("steps").max = model.max_steps;
  const format = $("format");
  const chosen = format.value;
  const formats = model ? model.output_formats : ["png"];
  format.replaceChildren(...formats.map((value, index) => Object.assign(document.createElement("option"),
    { value: index === 0 ? "" : value, textContent: value })));
  format.value = formats.includes(chosen) ? chosen : "";
}

async function loadCatalogue() {
  try {
    ({ data: catalogue } = await api("GET", "/models"));
  } catch (failure) {
    if (!(failure instanceof ApiFailure)) throw failure;
    showApiError(failure, $("form-error"));
    return;
  }
  const select = $("backend");
  const chosen = select.value;
  const fallback = catalogue.backends.find((offer) => offer.default);
  select.replaceChildren(Object.assign(document.createElement("option"),
    { value: "", textContent: `Deployment default${fallback ? ` (${fallback.backend})` : ""}` }));
  for (const offer of catalogue.backends) {
    select.append(Object.assign(document.createElement("option"), { value: offer.backend, textContent: offer.backend }));
  }
  select.value = chosen;
  showOffer();
}

// --- Start ---------------------------------------------------------------------------------
function start() {
  $("api-url").value = store.get("apiUrl");
  $("api-key").value = store.get("apiKey");
  $("api-url-default").textContent = new URL(config.apiUrl || "./", location.href).href;
  $("docs-link").href = apiBase() + "/docs";
  $("settings-form").addEventListener("submit", (event) => {
    event.preventDefault();
    clearErrors();
    const url = $("api-url").value.trim();
    if (url && !/^https?:\/\//.test(url)) {
      say(errorSlot("api_url"), "Give a full http:// or https:// URL.");
      $("api-url").setAttribute("aria-invalid", "true");
      $("api-url").focus();
      return;
    }
    store.set("apiUrl", url);
    store.set("apiKey", $("api-key").value.trim());
    $("docs-link").href = apiBase() + "/docs";
    $("settings-saved").textContent = "Saved.";
    setTimeout(() => { $("settings-saved").textContent = ""; }, 2000);
    loadCatalogue();
    loadStageWords();
    loadJobs();
  });
  $("backend").addEventListener("change", showOffer);
  $("generate-form").addEventListener("submit", submit);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("generate-form").requestSubmit();
  });
  $("cancel").addEventListener("click", cancel);
  $("refresh").addEventListener("click", () => loadJobs());
  $("more").addEventListener("click", () => loadJobs(true));
  const opened = /^#job=(.+)$/.exec(location.hash);
  if (opened) openJob(decodeURIComponent(opened[1]), { focus: false });
  loadCatalogue();
  loadStageWords();
  loadJobs();
}

start();
