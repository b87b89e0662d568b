// The patient's triage chat. Talks only to the Medclave proxy on this origin, which verifies the
// enclave and encapsulates every request to it. The client share lives in IndexedDB (never a
// cookie): without it no one, the patient included, can reopen the history.
"use strict";

const state = { token: null, user: null, share: null, current: null };
const $ = (id) => document.getElementById(id);

function b64url(bytes) {
  let s = "";
  bytes.forEach((b) => { s += String.fromCharCode(b); });
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open("medclave-triage", 2);
    req.onupgradeneeded = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains("shares")) db.createObjectStore("shares");
      // The latest state seen of each conversation (turn count, chain value): a store the
      // operator restored from an older copy verifies in the enclave, but not against this.
      if (!db.objectStoreNames.contains("seen")) db.createObjectStore("seen");
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function loadShare(user) {
  const db = await openDb();
  const get = (store) => new Promise((resolve, reject) => {
    const r = store.get(user);
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
  let share = await get(db.transaction("shares").objectStore("shares"));
  if (!share) {
    share = crypto.getRandomValues(new Uint8Array(32));
    await new Promise((resolve, reject) => {
      const tx = db.transaction("shares", "readwrite");
      tx.objectStore("shares").put(share, user);
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
    });
  }
  db.close();
  return b64url(share);
}

async function seen(id, value) {
  const db = await openDb();
  const result = await new Promise((resolve, reject) => {
    const tx = db.transaction("seen", value ? "readwrite" : "readonly");
    const store = tx.objectStore("seen");
    const r = value ? store.put(value, state.user + "/" + id) : store.get(state.user + "/" + id);
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
  db.close();
  return result;
}

function headers(extra) {
  return Object.assign({ "authorization": "Bearer " + state.token,
                         "medclave-share": state.share }, extra || {});
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "content-type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  const value = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = (value && value.error) || {};
    throw new Error((err.code || res.status) + ": " + (err.message || "request failed"));
  }
  return value;
}

async function verify() {
  try {
    const res = await fetch("/app/triage-verification");
    const body = await res.json();
    if (!res.ok) throw new Error((body.error && body.error.code) || res.status);
    const e = body.enclave;
    $("v-platform").textContent = e.platform + (e.secure ? "" : " (not a TEE)");
    $("v-measurement").textContent = e.measurement;
    $("v-model").textContent = e.model_digest;
    $("v-time").textContent = e.verified_at;
    $("verify-details").hidden = false;
    $("verify-status").textContent = "Verified: the service's attestation was checked against your hospital's policy before anything was sent.";
    $("verify-status").className = "verified";
    $("sim-banner").hidden = e.secure === true;
  } catch (err) {
    $("verify-status").textContent = "NOT verified: " + err.message + ". Do not use this service.";
    $("verify-status").className = "error";
  }
}

async function signIn(event) {
  event.preventDefault();
  $("signin-error").textContent = "";
  const form = new URLSearchParams({ grant_type: "password", username: $("username").value,
                                     password: $("password").value });
  const res = await fetch("/app/triage/token", { method: "POST", body: form,
    headers: { "content-type": "application/x-www-form-urlencoded" } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok || !body.access_token) {
    $("signin-error").textContent = "Sign-in failed: " + (body.code || body.error || res.status);
    return;
  }
  state.token = body.access_token;
  state.user = $("username").value;
  state.share = await loadShare(state.user);
  $("password").value = "";
  $("signin").hidden = true;
  $("chat-area").hidden = false;
  await refresh();
}

async function refresh() {
  const list = await api("GET", "/v1/medclave/conversations");
  const ul = $("conversations");
  ul.replaceChildren();
  list.data.forEach((c, i) => {
    const li = document.createElement("li");
    const when = c.created ? new Date(c.created * 1000).toLocaleString() : "";
    const button = document.createElement("button");
    button.type = "button";
    if (c.readable) {
      button.textContent = `Reopen conversation ${i + 1} (${when}, ${c.turns} messages)`;
      button.addEventListener("click", () => openConversation(c.id));
    } else {
      button.textContent = `Delete conversation ${i + 1} (cannot be opened in this browser)`;
      button.addEventListener("click", () => remove(c.id));
    }
    li.appendChild(button);
    ul.appendChild(li);
  });
}

function addTurn(role, text) {
  const li = document.createElement("li");
  li.className = role;
  const who = document.createElement("strong");
  who.textContent = role === "user" ? "You: " : "Assistant: ";
  const span = document.createElement("span");
  span.textContent = text;
  li.append(who, span);
  $("transcript").appendChild(li);
  return span;
}

function showTriage(head) {
  $("triage-level").textContent = "Triage level: " + head.triage.level;
  if (head.crisis) {
    $("crisis").textContent = head.crisis.message;
    $("crisis").hidden = false;
  }
}

async function openConversation(id) {
  const conv = await api("GET", "/v1/medclave/conversations/" + id);
  state.current = id;
  $("transcript").replaceChildren();
  $("crisis").hidden = true;
  $("triage-level").textContent = "";
  $("chat-error").textContent = "";
  conv.turns.forEach((t) => addTurn(t.role, t.content));
  const last = await seen(id);
  if (last && (conv.turns.length < last.turns ||
               conv.turns[last.turns - 1].chain !== last.chain)) {
    $("chat-error").textContent = "Warning: this conversation is older than the one this " +
      "browser saw last. Stored messages may have been removed.";
  } else if (conv.turns.length) {
    await seen(id, { turns: conv.turns.length, chain: conv.turns[conv.turns.length - 1].chain });
  }
  $("conversation").hidden = false;
  $("message").focus();
}

async function newConversation() {
  const consent = document.querySelector("input[name=consent]:checked").value;
  const body = { share_with_provider: consent };
  if (consent === "callback") body.callback = $("callback").value;
  try {
    const conv = await api("POST", "/v1/medclave/conversations", body);
    await openConversation(conv.id);
    await refresh();
  } catch (err) {
    $("chat-error").textContent = err.message;
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || !state.current) return;
  $("message").value = "";
  $("chat-error").textContent = "";
  addTurn("user", text);
  const transcript = $("transcript");
  transcript.setAttribute("aria-busy", "true");
  let answer = null;
  try {
    const res = await fetch(`/v1/medclave/conversations/${state.current}/turns`, {
      method: "POST", headers: headers({ "content-type": "application/json" }),
      body: JSON.stringify({ content: text, stream: true }) });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      throw new Error((body.error && body.error.code) || res.status);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const event = JSON.parse(line.slice(6));
        if (event.type === "triage") {
          showTriage(event);
          answer = addTurn("assistant", "");
        } else if (event.type === "delta" && answer) {
          answer.textContent += event.text;
        } else if (event.type === "done" && event.saved) {
          await seen(state.current, { turns: event.turn + 1, chain: event.chain });
        } else if (event.type === "done") {
          $("chat-error").textContent = "This answer could not be saved.";
        } else if (event.type === "error") {
          $("chat-error").textContent = event.error.code;
        }
      }
    }
  } catch (err) {
    $("chat-error").textContent = "Not sent: " + err.message;
  } finally {
    transcript.setAttribute("aria-busy", "false");
  }
  await refresh().catch(() => {});
}

async function exportConversation() {
  const conv = await api("GET", "/v1/medclave/conversations/" + state.current);
  const blob = new Blob([JSON.stringify(conv, null, 2)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = conv.id + ".json";
  document.body.appendChild(a);
  a.click();
  a.remove();
}

async function remove(id) {
  await api("DELETE", "/v1/medclave/conversations/" + id);
  if (state.current === id) {
    state.current = null;
    $("conversation").hidden = true;
  }
  await refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  verify();
  $("signin-form").addEventListener("submit", signIn);
  $("new-conversation").addEventListener("click", newConversation);
  $("message-form").addEventListener("submit", send);
  $("export").addEventListener("click", exportConversation);
  $("delete").addEventListener("click", () => remove(state.current));
});
