"use strict";
// The imguard page: choose photos, queue a job, follow it, show and download the results.
const $ = (id) => document.getElementById(id);
const previews = {};      // job id -> [object URLs of the originals, kept in this page only]
const shown = new Set();  // job ids whose results are drawn
let info = null;
let chosen = [];

// what each strength means for a person (the preset's own description is in the details)
const PLAIN = {
  low: "quickest: the lightest protection, against the common editors' autoencoder",
  medium: "balanced: takes longer, also changes the photo itself for editors it never saw",
  high: "strongest that stays invisible: takes longest, twice the face models, also aims at JPEG saving",
  max: "stronger than high, and not quite invisible: zoomed in, a fine mesh shows on smooth skin and backgrounds",
};

function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c])); }

function duration(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return `${Math.max(1, Math.round(s))} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function photos(names) {
  if (names.length === 1) return names[0];
  return `${names[0]} and ${names.length - 1} more`;
}

async function api(url, options) {
  const r = await fetch(url, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = {}; }
  if (!r.ok) {
    const err = new Error(body.detail || `the server answered ${r.status}`);
    err.status = r.status;
    throw err;
  }
  return body;
}

async function loadInfo() {
  info = await api("/api/info");
  const sel = $("strength");
  for (const s of info.strengths) {
    const o = document.createElement("option");
    o.value = s.name; o.textContent = s.name;
    if (s.name === info.default_strength) o.selected = true;
    sel.appendChild(o);
  }
  sel.onchange = noteStrength; noteStrength();
  $("steps").max = info.limits.max_steps;
}
function noteStrength() {
  const s = info.strengths.find((x) => x.name === $("strength").value);
  $("strength-note").textContent = s ? (PLAIN[s.name] || s.description) : "";
  $("strength-note").title = s ? `${s.description} (at most ${s.eps}/255 per pixel, ${s.steps} steps)` : "";
}
function choose(files) {
  chosen = Array.from(files);
  $("chosen").textContent = chosen.length ? chosen.map((f) => `${f.name} (${(f.size / 1048576).toFixed(1)} MB)`).join(", ") : "";
  $("go").disabled = chosen.length === 0;
  $("error").textContent = "";
}
const drop = $("drop");
drop.onclick = () => $("files").click();
$("files").onchange = (e) => choose(e.target.files);
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files); };

$("go").onclick = async () => {
  $("error").textContent = "";
  const form = new FormData();
  for (const f of chosen) form.append("files", f, f.name);
  form.append("strength", $("strength").value);
  form.append("steps", $("steps").value);
  $("go").disabled = true;
  try {
    const body = await api("/api/jobs", {method: "POST", body: form});
    previews[body.id] = chosen.map((f) => URL.createObjectURL(f));
    refresh();
  } catch (e) {
    $("error").textContent = e.status ? e.message : `could not reach the imguard server: ${e}`;
  } finally {
    $("go").disabled = chosen.length === 0;
  }
};

function progressCell(j) {
  const p = j.progress;
  if (j.status === "queued") return j.position ? `waiting: ${j.position === 1 ? "next" : "number " + j.position + " in line"}` : "waiting";
  if (j.status === "failed") return `<span class="bad">${esc(j.error)}</span>`;
  if (j.status === "done") return "done";
  if (!p.steps) return "starting (loading the models)";
  const frac = (p.image + p.step / p.steps) / p.images;
  const left = p.eta_seconds === null ? "estimating the time left" : `about ${duration(p.eta_seconds)} left`;
  const which = p.images > 1 ? `photo ${p.image + 1} of ${p.images}, ` : "";
  return `<progress max="1" value="${frac}"></progress>${which}${Math.round(frac * 100)}%, ${left}`;
}

function headline(r) {
  if (!r.check.length) return `<div class="headline">Done. <span class="muted">(No check was possible: the models in use cannot tell whether the person is still recognisable.)</span></div>`;
  const lost = r.check.every((c) => c.identity_lost);
  if (lost) return `<div class="headline ok">Protected: after an AI edit, a face recognizer no longer recognises the person.</div>`;
  return `<div class="headline bad">Not protected enough: the person is still recognisable after an AI edit. Try a higher strength or more steps.</div>`;
}

function seen(r) {
  const v = r.visibility;
  if (!v) return "";
  // a strength with a caveat (max) passes the test's numbers and still shows when zoomed in
  const s = info && info.strengths.find((x) => x.name === r.strength);
  const words = !v.invisible ? "The change may be visible on smooth areas (it does not pass imguard's visibility test)."
    : s && s.caveat ? `It passes imguard's visibility test, but at this strength, ${esc(s.caveat)}.`
    : "The change is too small to see (measured: it passes imguard's visibility test).";
  return `<div class="muted visibility">${words}</div>`;
}

function details(r) {
  const sim = (c) => c.similarity === null ? "no face found" : `similarity ${c.similarity.toFixed(2)} (same person above ${c.threshold.toFixed(2)})`;
  const checks = r.check.map((c) => `<li>check by ${esc(c.judge)}${c.judge_attacked ? " (a model the protection attacked)" : ""} after a ${esc(c.autoencoder)} round trip: ${sim(c)}</li>`).join("");
  return `<details><summary>Technical details</summary><ul>
    <li>${r.width}x${r.height} pixels, ${esc(r.method)}${r.strength ? " (" + esc(r.strength) + ")" : ""}, ${r.steps} steps in ${r.seconds} s</li>
    <li>largest change of a pixel: <span class="achieved">${r.achieved.toFixed(2)}</span>/255 (the limit is ${r.eps}/255)</li>
    <li>objective ${r.objective[0].toFixed(4)} &rarr; ${r.objective[1].toFixed(4)} (higher = stronger)</li>
    ${r.visibility ? `<li>visibility: PSNR ${r.visibility.psnr === null ? "&infin;" : r.visibility.psnr.toFixed(1)} dB, SSIM ${r.visibility.ssim.toFixed(3)}, change on smooth areas ${r.visibility.flat.toFixed(2)}/255 (invisible: at most 1.0/255, PSNR at least 36 dB, SSIM at least 0.95)</li>` : ""}
    ${checks}</ul></details>`;
}

function drawResults(j) {
  const box = $("results");
  if (!shown.size) box.innerHTML = "";
  box.classList.remove("muted");
  const urls = previews[j.id] || [];
  const div = document.createElement("div");
  div.className = "card job";
  div.dataset.job = j.id;
  let html = "";
  j.results.forEach((r, i) => {
    html += `<div class="card result" data-index="${i}">
      <strong>${esc(r.name)}</strong>
      ${headline(r)}
      ${seen(r)}
      <div class="imgs">
        <figure><img alt="before" src="${urls[i] || r.original}"><figcaption>before</figcaption></figure>
        <figure><img alt="after" class="after" src="${r.protected}"><figcaption>after (protected)</figcaption></figure>
        <figure><img alt="the change" src="${r.diff}"><figcaption>the change, made ${info.diff_gain} times stronger so you can see it</figcaption></figure>
      </div>
      <div class="downloads"><a class="download" href="${r.protected}" download="${esc(r.download_name)}">download ${esc(r.download_name)}</a></div>
      ${details(r)}
    </div>`;
  });
  if (j.results.length > 1) html += `<a class="download zip" href="/api/jobs/${j.id}/zip">download all (zip)</a>`;
  div.innerHTML = html;
  box.prepend(div);
  shown.add(j.id);
}

async function refresh() {
  let jobs;
  try { jobs = (await api("/api/jobs")).jobs; } catch (e) {
    if (e.status) $("error").textContent = e.message;
    return;
  }
  const q = $("queue");
  q.innerHTML = jobs.length ? jobs.map((j) => `<tr data-job="${esc(j.id)}" data-status="${esc(j.status)}">
    <td title="${esc(j.names.join(", "))}">${esc(photos(j.names))}</td><td>${esc(j.strength)}${j.steps ? ", " + j.steps + " steps" : ""}</td>
    <td class="status">${esc(j.status)}</td><td>${progressCell(j)}</td></tr>`).join("")
    : `<tr><td colspan="4" class="muted">nothing yet</td></tr>`;
  for (const j of jobs) if (j.status === "done" && !shown.has(j.id)) drawResults(j);
}

loadInfo().then(refresh).catch((e) => { $("error").textContent = e.message; });
setInterval(refresh, 700);
