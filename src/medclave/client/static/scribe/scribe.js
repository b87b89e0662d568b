// The scribe page: talks only to this proxy (CSP connect-src 'self'). No storage: the audio,
// the transcript and the note live in this page's memory only.
"use strict";

const $ = (id) => document.getElementById(id);
let audio = null;        // a Blob: the recording or the chosen file
let recorder = null;
let draft = null;        // the scribe's answer
const decisions = new Map();

function text(el, value) { el.textContent = value; }

async function loadStatus() {
  const banner = $("banner");
  try {
    const response = await fetch("/app/scribe/status", { cache: "no-store" });
    const body = await response.json();
    showStatus(body);
  } catch (err) {
    banner.className = "banner refused";
    banner.dataset.state = "refused";
    text(banner, "The proxy could not be reached.");
  }
}

function showStatus(body) {
  const banner = $("banner");
  const list = $("verification");
  list.replaceChildren();
  if (!body.upstream_verified) {
    banner.className = "banner refused";
    banner.dataset.state = "refused";
    text(banner, "The enclave was NOT verified (" + (body.error || "unknown") + "): nothing will be sent.");
    $("send").disabled = true;
    return;
  }
  const enclave = body.enclave;
  const speech = enclave.speech || {};
  if (!enclave.secure) {
    banner.className = "banner sim";
    banner.dataset.state = "sim";
    text(banner, "SIMULATED ENCLAVE (sim): development only, it protects nothing. Do not use real patient audio.");
  } else {
    banner.className = "banner verified";
    banner.dataset.state = "verified";
    text(banner, "Verified enclave on " + enclave.platform + ": audio is encrypted to it and kept nowhere.");
  }
  const rows = [
    ["Platform", enclave.platform], ["Measurement", enclave.measurement || "-"],
    ["Chat model", enclave.model_id + " " + (enclave.model_digest || "").slice(0, 16) + "…"],
    ["Speech model", (speech.model_id || "none") + " " + (speech.model_digest || "").slice(0, 16) + "…"],
    ["Audio retention", speech.audio_retention || "not stated"],
    ["Transcription sandbox", speech.sandbox || "not stated"],
    ["Policy", (enclave.appraisal_policy || {}).name || "-"], ["Verified at", enclave.verified_at],
  ];
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); text(dt, k);
    const dd = document.createElement("dd"); text(dd, String(v)); dd.dataset.field = k;
    list.append(dt, dd);
  }
  if (speech.audio_retention !== "none") {
    banner.className = "banner refused";
    banner.dataset.state = "refused";
    text(banner, "This enclave does not state that it keeps no audio: nothing will be sent.");
    $("send").disabled = true;
  }
}

function setAudio(blob, label) {
  audio = blob;
  text($("recording-state"), label);
  $("send").disabled = !audio || $("banner").dataset.state === "refused";
}

async function record() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const chunks = [];
  recorder = new MediaRecorder(stream, { mimeType: "audio/webm;codecs=opus" });
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    setAudio(new Blob(chunks, { type: "audio/webm" }), "Recorded " + Math.round(chunks.reduce((n, c) => n + c.size, 0) / 1024) + " KiB");
  };
  recorder.start(250);
  $("record").disabled = true; $("stop").disabled = false;
  text($("recording-state"), "Recording…");
}

function stop() {
  if (recorder && recorder.state !== "inactive") recorder.stop();
  $("record").disabled = false; $("stop").disabled = true;
}

async function send() {
  if (!audio) return;
  const form = new FormData();
  form.append("file", audio, audio.name || "visit.webm");
  if ($("patient").value) form.append("patient", $("patient").value);
  if ($("reason").value) form.append("context", JSON.stringify({ reason: $("reason").value }));
  const headers = {};
  if ($("token").value) headers["Authorization"] = "Bearer " + $("token").value;
  $("send").disabled = true;
  text($("send-state"), "Transcribing and drafting inside the enclave…");
  try {
    const response = await fetch("/v1/medclave/scribe", { method: "POST", body: form, headers });
    const body = await response.json();
    if (!response.ok) {
      text($("send-state"), "Refused: " + ((body.error || {}).code || response.status) + " " + ((body.error || {}).message || ""));
      return;
    }
    text($("send-state"), "Done.");
    audio = null;  // dropped: the page keeps no audio once it is sent
    show(body, response.headers.get("x-request-id"));
    loadStatus();
  } finally {
    $("send").disabled = !audio;
  }
}

function show(body, requestId) {
  draft = body;
  decisions.clear();
  $("result").hidden = false;
  // The transcript, with each sentence a span that statements point to.
  const pre = $("transcript");
  pre.replaceChildren();
  const t = body.transcript.text;
  let at = 0;
  for (const s of body.transcript.sentences) {
    if (s.start > at) pre.append(document.createTextNode(t.slice(at, s.start)));
    const span = document.createElement("span");
    span.className = "span"; span.dataset.sentence = s.id;
    text(span, t.slice(s.start, s.end));
    pre.append(span);
    at = s.end;
  }
  if (at < t.length) pre.append(document.createTextNode(t.slice(at)));
  // The note, statement by statement.
  const note = $("note");
  note.replaceChildren();
  for (const [section, items] of Object.entries(body.note.sections)) {
    const h = document.createElement("h4"); text(h, section[0].toUpperCase() + section.slice(1));
    const ul = document.createElement("ul"); ul.dataset.section = section;
    if (!items.length) { const li = document.createElement("li"); text(li, "None recorded."); ul.append(li); }
    for (const item of items) {
      const li = document.createElement("li");
      li.className = "statement"; li.dataset.sentence = item.sentence; li.tabIndex = 0;
      text(li, item.text);
      const by = document.createElement("span"); by.className = "by"; text(by, item.drafted_by === "model" ? "drafted" : "verbatim");
      li.append(by);
      li.addEventListener("mouseenter", () => highlight(item.sentence, li));
      li.addEventListener("focus", () => highlight(item.sentence, li));
      li.addEventListener("click", () => highlight(item.sentence, li));
      ul.append(li);
    }
    note.append(h, ul);
  }
  // The codes, to accept or drop.
  const tbody = $("codes").querySelector("tbody");
  tbody.replaceChildren();
  for (const c of body.codes) {
    const tr = document.createElement("tr"); tr.dataset.code = c.code;
    for (const v of [c.code, c.display, c.confidence.toFixed(2)]) { const td = document.createElement("td"); text(td, v); tr.append(td); }
    const td = document.createElement("td");
    for (const choice of ["accept", "drop"]) {
      const b = document.createElement("button"); b.type = "button"; b.dataset.action = choice;
      text(b, choice === "accept" ? "Accept" : "Drop");
      b.addEventListener("click", () => { decisions.set(c.code, choice); tr.className = "code-" + (choice === "accept" ? "accepted" : "dropped"); refreshFhir(); });
      td.append(b);
    }
    tr.addEventListener("mouseenter", () => highlight(c.sentence, null));
    tr.append(td); tbody.append(tr);
  }
  text($("audit"), "Audit: request " + (requestId || "?") + " is in the enclave's log with commitments of the audio, note and codes (no text).");
  refreshFhir();
}

function fhirResource() {
  // The enclave's DocumentReference; the accepted codes ride along as a note on it.
  const resource = JSON.parse(JSON.stringify(draft.fhir));
  const accepted = draft.codes.filter((c) => decisions.get(c.code) === "accept");
  if (accepted.length) {
    resource.context = resource.context || {};
    resource.context.related = accepted.map((c) => ({ display: "ICD-10-CM " + c.code + " " + c.display }));
  }
  return JSON.stringify(resource, null, 2);
}

function refreshFhir() {
  const link = $("download");
  if (link.dataset.url) URL.revokeObjectURL(link.dataset.url);
  const url = URL.createObjectURL(new Blob([fhirResource()], { type: "application/fhir+json" }));
  link.href = url; link.dataset.url = url;
}

function highlight(sentenceId, li) {
  document.querySelectorAll(".span.hl").forEach((e) => e.classList.remove("hl"));
  document.querySelectorAll(".statement.active").forEach((e) => e.classList.remove("active"));
  const span = document.querySelector('.span[data-sentence="' + sentenceId + '"]');
  if (span) { span.classList.add("hl"); span.scrollIntoView({ block: "nearest" }); }
  if (li) li.classList.add("active");
}

async function copyFhir() {
  try {
    await navigator.clipboard.writeText(fhirResource());
    text($("copy-state"), "Copied.");
  } catch (err) {
    text($("copy-state"), "Copy failed: use Download.");
  }
}

window.addEventListener("DOMContentLoaded", () => {
  $("record").addEventListener("click", () => record().catch((e) => text($("recording-state"), "No microphone: " + e.name)));
  $("stop").addEventListener("click", stop);
  $("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) setAudio(f, f.name); });
  $("send").addEventListener("click", send);
  $("copy").addEventListener("click", copyFhir);
  loadStatus();
});
