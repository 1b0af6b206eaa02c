// splatforge web app: every call goes to the job service's JSON API with the API key from
// sessionStorage (Authorization: Bearer). No framework, no build step.
"use strict";

const KEY = "splatforge.api_key";
const $ = (sel, root = document) => root.querySelector(sel);

function apiKey() { return sessionStorage.getItem(KEY) || ""; }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// The server's message of an error response: FastAPI's {"detail": str | [{loc, msg}]}.
function detailText(body, status) {
  const d = body && body.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map(e => (e.loc ? e.loc.filter(x => x !== "body").join(".") + ": " : "") + e.msg).join("; ");
  return `HTTP ${status}`;
}

async function api(path, opts = {}) {
  const headers = new Headers(opts.headers || {});
  if (apiKey()) headers.set("Authorization", "Bearer " + apiKey());
  let body = opts.body;
  if (opts.json !== undefined) { headers.set("Content-Type", "application/json"); body = JSON.stringify(opts.json); }
  const r = await fetch(path, { method: opts.method || "GET", headers, body, signal: opts.signal });
  if (!r.ok) {
    let data = null;
    try { data = await r.json(); } catch (e) { /* not JSON */ }
    if (r.status === 401 && document.body.dataset.authRequired === "true") showSignin(detailText(data, r.status));
    throw new ApiError(r.status, detailText(data, r.status));
  }
  return opts.raw ? r : (r.headers.get("content-type") || "").includes("json") ? r.json() : r.text();
}

async function apiBlob(path) { return (await api(path, { raw: true })).blob(); }

// Save a blob under a file name (the browser's download).
function saveBlob(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 10000);
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v; else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function fmtEta(s) {
  if (s === null || s === undefined || !isFinite(s)) return "";
  s = Math.round(s);
  const m = Math.floor(s / 60), r = s % 60;
  return m ? `${m} min ${r} s` : `${r} s`;
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function progressText(job) {
  const p = job.progress || {};
  let t = job.stage ? `stage ${job.stage}` : job.status;
  if (p.step !== null && p.step !== undefined && p.total) t += `: step ${p.step} of ${p.total}`;
  else if (p.step !== null && p.step !== undefined) t += `: step ${p.step}`;
  const eta = fmtEta(job.eta_s);
  if (eta && job.status === "running") t += `, ETA ${eta}`;
  return t;
}

// -- sign-in ------------------------------------------------------------------------------
function showSignin(msg) {
  const s = $("#signin");
  if (!s) return;
  s.hidden = false;
  $("#app").hidden = true;
  $("#signout").hidden = true;
  if (msg) $("#signin-msg").textContent = msg;
  $("#api-key").focus();
}

function signedIn() {
  if ($("#signin")) $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#signout").hidden = !apiKey();
}

async function initAuth() {
  const needed = document.body.dataset.authRequired === "true";
  if (needed) {
    $("#signin-form").addEventListener("submit", async ev => {
      ev.preventDefault();
      const key = $("#api-key").value.trim();
      sessionStorage.setItem(KEY, key);
      $("#signin-msg").textContent = "";
      try {
        await api("/jobs?limit=1");
        signedIn();
        startPage();
      } catch (e) {
        sessionStorage.removeItem(KEY);
        showSignin(e.message);
      }
    });
    $("#signout").addEventListener("click", () => { sessionStorage.removeItem(KEY); location.reload(); });
    if (!apiKey()) { showSignin(""); return false; }
    try { await api("/jobs?limit=1"); } catch (e) { sessionStorage.removeItem(KEY); showSignin(e.message); return false; }
  }
  signedIn();
  return true;
}

// -- home: new scene, job list ------------------------------------------------------------
function formOptions(form) {
  const out = {};
  for (const input of form.querySelectorAll("[data-stage][data-field]")) {
    let v;
    if (input.dataset.type === "boolean") { if (!input.checked) continue; v = true; }
    else {
      if (input.value === "") continue;
      v = input.dataset.type === "number" ? Number(input.value) : input.value;
    }
    (out[input.dataset.stage] = out[input.dataset.stage] || {})[input.dataset.field] = v;
  }
  return out;
}

function initHome() {
  const form = $("#new-form"), input = $("#files"), drop = $("#drop");
  const summary = () => {
    const n = input.files.length;
    $("#file-summary").textContent = n ? `${n} file${n > 1 ? "s" : ""} (${fmtBytes([...input.files].reduce((a, f) => a + f.size, 0))})` : "";
  };
  input.addEventListener("change", summary);
  for (const t of ["dragenter", "dragover"]) drop.addEventListener(t, e => { e.preventDefault(); drop.classList.add("over"); });
  for (const t of ["dragleave", "drop"]) drop.addEventListener(t, () => drop.classList.remove("over"));
  drop.addEventListener("drop", e => { e.preventDefault(); input.files = e.dataTransfer.files; summary(); });
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const status = $("#new-status"), error = $("#new-error"), button = $("#start");
    error.textContent = "";
    if (!input.files.length) { error.textContent = "choose photos, a zip or a video first"; return; }
    button.disabled = true;
    try {
      status.textContent = "creating the scene…";
      const name = $("#scene-name").value.trim();
      const scene = await api("/scenes", { method: "POST", json: name ? { name } : {} });
      status.textContent = `uploading ${input.files.length} file(s)…`;
      const fd = new FormData();
      for (const f of input.files) fd.append("files", f, f.name);
      await api(`/scenes/${scene.id}/media`, { method: "POST", body: fd });
      status.textContent = "starting the job…";
      const preset = form.querySelector("input[name=preset]:checked").value;
      const job = await api(`/scenes/${scene.id}/jobs`, { method: "POST", json: { preset, ...formOptions(form) } });
      status.textContent = "started";
      location.href = `/ui/jobs/${job.job_id}`;
    } catch (e) {
      status.textContent = "";
      error.textContent = e.message;
    } finally {
      button.disabled = false;
    }
  });
  refreshJobs();
  setInterval(refreshJobs, 3000);
}

async function refreshJobs() {
  try {
    const jobs = await api("/jobs?limit=50");
    const tbody = $("#job-table tbody");
    tbody.replaceChildren(...jobs.map(j => {
      const p = j.progress || {};
      const frac = p.fraction !== null && p.fraction !== undefined ? `${Math.round(p.fraction * 100)}%` : "";
      return el("tr", {},
        el("td", {}, el("a", { href: `/ui/jobs/${j.id}`, text: j.id.slice(0, 8) })),
        el("td", { text: j.kind }), el("td", {}, el("span", { class: `badge ${j.status}`, text: j.status })),
        el("td", { text: j.stage || "" }), el("td", { text: frac }), el("td", { text: (j.created_at || "").replace("T", " ").slice(0, 19) }));
    }));
    $("#jobs-error").textContent = "";
  } catch (e) { $("#jobs-error").textContent = e.message; }
}

// -- job page -----------------------------------------------------------------------------
function sparkline(svg, values) {
  const pts = values.filter(v => isFinite(v));
  if (pts.length < 2) { svg.replaceChildren(); return; }
  const lo = Math.min(...pts), hi = Math.max(...pts), span = hi - lo || 1;
  const d = pts.map((v, i) => `${(i / (pts.length - 1) * 200).toFixed(1)},${(38 - (v - lo) / span * 36).toFixed(1)}`).join(" ");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", d);
  svg.replaceChildren(line);
}

function logLine(ev) {
  const t = new Date(ev.time * 1000).toISOString().slice(11, 19);
  const step = ev.step !== null && ev.step !== undefined ? (ev.total ? ` ${ev.step}/${ev.total}` : ` ${ev.step}`) : "";
  return `${t} ${ev.stage ? "[" + ev.stage + "] " : ""}${ev.kind}${step}: ${ev.message || ""}`;
}

// Read GET /jobs/{id}/events (Server-Sent Events) with fetch, so the key can be sent.
async function streamEvents(jobId, onEvent, onEnd) {
  let after = 0;
  for (let attempt = 0; attempt < 100; attempt++) {
    try {
      const r = await api(`/jobs/${jobId}/events?after=${after}`, { raw: true });
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
          const msg = {};
          for (const line of chunk.split("\n")) {
            if (!line || line.startsWith(":")) continue;
            const k = line.indexOf(":");
            const key = k < 0 ? line : line.slice(0, k), val = k < 0 ? "" : line.slice(k + 1).replace(/^ /, "");
            msg[key] = (msg[key] ? msg[key] + "\n" : "") + val;
          }
          if (msg.id) after = Number(msg.id);
          if (msg.event === "end") { await onEnd(); return; }
          if (msg.data) onEvent(JSON.parse(msg.data));
        }
      }
    } catch (e) {
      if (e instanceof ApiError) throw e;
    }
    await new Promise(res => setTimeout(res, 1000));
  }
}

function initJob() {
  const jobId = $("#job").dataset.jobId;
  const loss = [], psnr = [];
  const log = $("#log");
  let job = null;

  function show(j) {
    job = j;
    const st = $("#job-status");
    st.textContent = j.status;
    st.className = `badge ${j.status}`;
    $("#job-kind").textContent = `${j.kind} job of scene ${j.scene_id.slice(0, 8)}`;
    $("#progress-text").textContent = progressText(j);
    const f = (j.progress || {}).fraction;
    if (f !== null && f !== undefined) $("#progress-bar").value = f;
    $("#cancel").hidden = ["succeeded", "failed", "cancelled"].includes(j.status);
    if (j.error) $("#job-error").textContent = `${j.status} in stage ${j.error.stage || "?"}: ${j.error.message || ""}`;
    if (j.status === "succeeded") {
      const a = $("#result-link");
      a.href = `/ui/scenes/${j.scene_id}`;
      a.hidden = false;
    }
  }

  async function refresh() { show(await api(`/jobs/${jobId}`)); }

  $("#cancel").addEventListener("click", async () => {
    $("#cancel-msg").textContent = "";
    try { show(await api(`/jobs/${jobId}/cancel`, { method: "POST" })); }
    catch (e) { $("#cancel-msg").textContent = e.message; }
  });

  refresh().then(() => streamEvents(jobId, ev => {
    log.textContent += logLine(ev) + "\n";
    log.scrollTop = log.scrollHeight;
    if (ev.kind === "progress" && job) {
      const j = { ...job, stage: ev.stage || job.stage, eta_s: ev.eta_s,
        progress: { ...job.progress, step: ev.step, total: ev.total, fraction: ev.total ? ev.step / ev.total : job.progress.fraction } };
      if (job.status === "queued") j.status = "running";
      show(j);
      const d = ev.data || {};
      if (isFinite(d.loss)) { loss.push(d.loss); sparkline($("#spark-loss"), loss); $("#loss-val").textContent = Number(d.loss).toFixed(4); }
      if (isFinite(d.psnr)) { psnr.push(d.psnr); sparkline($("#spark-psnr"), psnr); $("#psnr-val").textContent = `${Number(d.psnr).toFixed(2)} dB`; }
    } else if (ev.kind === "stage_started" || ev.kind === "status") {
      refresh().catch(() => {});
    }
  }, refresh)).catch(e => { $("#job-error").textContent = e.message; });
}

// -- scene (result) page ------------------------------------------------------------------
function initScene() {
  const sceneId = $("#scene").dataset.sceneId;
  const err = $("#scene-error");

  async function load() {
    const scene = await api(`/scenes/${sceneId}`);
    $("#scene-name").textContent = scene.name || "";
    const recon = scene.jobs.filter(j => j.kind !== "render" && j.status === "succeeded").pop();
    const arts = (await api(`/scenes/${sceneId}/artifacts`)).artifacts;
    const names = new Set(arts.map(a => a.name));
    // metrics
    const dl = $("#metrics");
    dl.replaceChildren();
    if (recon) {
      const job = await api(`/jobs/${recon.id}`);
      const m = job.metrics || {};
      const rows = [["PSNR (held-out)", m.psnr !== undefined && m.psnr !== null ? `${m.psnr.toFixed(2)} dB` : "–"],
        ["SSIM", m.ssim !== undefined && m.ssim !== null ? m.ssim.toFixed(4) : "–"],
        ["Gaussians", m.num_gaussians ?? "–"], ["Steps", m.step ?? "–"],
        ["Images registered", m.num_images !== undefined ? `${m.num_registered} of ${m.num_images}` : "–"]];
      for (const [k, v] of rows) dl.append(el("dt", { text: k }), el("dd", { text: String(v) }));
    } else {
      err.textContent = "this scene has no finished reconstruction yet";
    }
    // held-out renders
    const gal = $("#heldout");
    gal.replaceChildren();
    for (const a of arts.filter(a => a.name.startsWith("renders/") && /\.(png|jpg)$/i.test(a.name))) {
      const img = el("img", { alt: `held-out view ${a.name.slice(8)}: ground truth, render, error`, class: "heldout" });
      gal.append(el("figure", {}, img, el("figcaption", { text: a.name.slice(8) })));
      apiBlob(a.url).then(b => { img.src = URL.createObjectURL(b); });
    }
    // downloads
    const ul = $("#downloads");
    ul.replaceChildren(...arts.map(a => {
      const b = el("button", { type: "button", class: "link", "data-artifact": a.name, text: a.name });
      b.addEventListener("click", async () => saveBlob(await apiBlob(a.url), a.name.split("/").pop()));
      return el("li", {}, b, ` ${fmtBytes(a.size)}`);
    }));
    // videos
    const vids = $("#videos");
    vids.replaceChildren();
    for (const a of arts.filter(a => a.name.startsWith("videos/") && a.name.endsWith(".mp4"))) showVideo(a.name, a.url);
    // 3D view
    if (names.has("scene.splat") && !window.__splatStarted && window.SplatView) {
      window.__splatStarted = true;
      const status = $("#view-status");
      status.textContent = "loading scene.splat…";
      try {
        const [buf, cams] = await Promise.all([
          apiBlob(`/scenes/${sceneId}/artifacts/scene.splat`).then(b => b.arrayBuffer()),
          names.has("cameras.json") ? api(`/scenes/${sceneId}/artifacts/cameras.json`, { raw: true }).then(r => r.json()) : Promise.resolve([])]);
        window.splatView = new window.SplatView($("#splat-canvas"), buf, cams);
        status.textContent = `${window.splatView.count} Gaussians`;
      } catch (e) { status.textContent = `cannot show the 3D view: ${e.message}`; }
    }
  }

  function showVideo(name, url) {
    const id = "video-" + name.replace(/[^a-z0-9]/gi, "-");
    if (document.getElementById(id)) return;
    const v = el("video", { controls: "", playsinline: "", muted: "", loop: "", "aria-label": `camera-path video ${name}` });
    const b = el("button", { type: "button", class: "link", text: `download ${name.split("/").pop()}` });
    b.addEventListener("click", async () => saveBlob(await apiBlob(url), name.split("/").pop()));
    $("#videos").append(el("figure", { id }, v, el("figcaption", {}, b)));
    apiBlob(url).then(blob => { v.src = URL.createObjectURL(blob); });
  }

  $("#render-form").addEventListener("submit", async ev => {
    ev.preventDefault();
    const status = $("#render-status"), rerr = $("#render-error");
    rerr.textContent = "";
    const body = { path: $("#render-path").value, fps: Number($("#render-fps").value) || 24 };
    if ($("#render-frames").value) body.frames = Number($("#render-frames").value);
    try {
      const job = await api(`/scenes/${sceneId}/renders`, { method: "POST", json: body });
      status.textContent = "render queued";
      await streamEvents(job.job_id, e => {
        if (e.kind === "progress" && e.stage === "render") status.textContent = `rendering: frame ${e.step} of ${e.total}`;
      }, async () => {});
      const done = await api(`/jobs/${job.job_id}`);
      if (done.status !== "succeeded") {
        status.textContent = "";
        rerr.textContent = `${done.status}${done.error ? " in stage " + done.error.stage + ": " + done.error.message : ""}`;
        return;
      }
      status.textContent = `video ready: ${done.metrics.frames} frames, ${done.metrics.width}x${done.metrics.height}`;
      showVideo(done.metrics.video, `/scenes/${sceneId}/artifacts/${done.metrics.video}`);
    } catch (e) { status.textContent = ""; rerr.textContent = e.message; }
  });

  load().catch(e => { err.textContent = e.message; });
}

function startPage() {
  if (window.__pageStarted) return;
  window.__pageStarted = true;
  if ($("#new-form")) initHome();
  if ($("#job")) initJob();
  if ($("#scene")) initScene();
}

document.addEventListener("DOMContentLoaded", async () => {
  if (await initAuth()) startPage();
});
