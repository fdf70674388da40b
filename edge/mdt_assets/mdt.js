// The MDT page. No framework, no outside assets. Data from the server is only ever put into
// the page with textContent (never innerHTML), so a plate or a note cannot inject markup.
"use strict";

const ANSWER_LABELS = {
  confirmed_match: "Confirmed match",
  misread: "Misread",
  wrong_state: "Wrong state",
  vehicle_mismatch: "Vehicle does not match",
  entry_cleared: "Entry cleared",
  not_actionable: "Not actionable",
};
const PENDING_KEY = "mdt-pending-answers";

const mdt = {
  csrf: null,
  officer: null,
  events: null,
  hits: new Map(), // hit_id -> view
  answers: Object.keys(ANSWER_LABELS),
  retryTimer: null,
};
// Wall-clock times (ms since the epoch) at which each hit first appeared / was first painted:
// read by the latency benchmark and the browser tests.
window.mdtHitShown = {};
window.mdtHitPainted = {};

function $(sel, root) { return (root || document).querySelector(sel); }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function nowMs() { return performance.timeOrigin + performance.now(); }
function fmtTime(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString([], { hour12: false }) : "?"; }
function fmtAge(s) {
  if (s === null || s === undefined) return "never refreshed";
  if (s < 3600) return Math.round(s / 60) + " min";
  if (s < 48 * 3600) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " days";
}
function uuid4() {
  // crypto.randomUUID needs a secure context; the car LAN page is plain http.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  if (method !== "GET" && mdt.csrf) opts.headers["X-CSRF-Token"] = mdt.csrf;
  let res;
  try {
    res = await fetch(path, opts);
  } catch (err) {
    return { ok: false, status: 0, data: { error: "no connection to the ALPR unit" } };
  }
  let data = {};
  try { data = await res.json(); } catch (err) { data = {}; }
  if (res.status === 401 && path !== "/api/login") showLogin(data.error || "session expired: log in again");
  return { ok: res.ok, status: res.status, data };
}

// ------------------------------------------------------------------ login and session

function showLogin(message) {
  mdt.csrf = null;
  if (mdt.events) { mdt.events.close(); mdt.events = null; }
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#st-officer").textContent = "";
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#officer-id").focus();
}

async function start(session) {
  mdt.csrf = session.csrf_token;
  mdt.officer = session.officer;
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  $("#st-officer").textContent = `${session.officer.name} (${session.officer.id})`;
  const cfg = await api("GET", "/api/config");
  if (cfg.ok) {
    mdt.answers = cfg.data.answers;
    const sel = $("#suppress-list");
    while (sel.options.length > 1) sel.remove(1);
    for (const k of cfg.data.list_kinds) sel.add(new Option(k.replace(/_/g, " "), k));
    $("#search-case").required = !!cfg.data.search_requires_case_number;
  }
  openEvents();
  flushPending();
}

function openEvents() {
  if (mdt.events) mdt.events.close();
  const es = new EventSource("/api/events");
  mdt.events = es;
  es.addEventListener("hit", (ev) => upsertHit(JSON.parse(ev.data)));
  es.addEventListener("answer", (ev) => addAnswer(JSON.parse(ev.data)));
  es.addEventListener("status", (ev) => renderStatus(JSON.parse(ev.data)));
  es.addEventListener("session", () => { es.close(); showLogin("session expired: log in again"); });
  es.addEventListener("open", () => notice(""));
  es.addEventListener("error", async () => {
    notice("connection to the ALPR unit lost: reconnecting…");
    const s = await api("GET", "/api/session");
    if (!s.ok && s.status === 401) es.close();
  });
}

function notice(text) {
  const n = $("#notice");
  n.textContent = text;
  n.hidden = !text;
}

// ------------------------------------------------------------------ status strip

function setItem(id, text, level) {
  const e = $(id);
  e.textContent = text;
  e.className = "item " + (level ? "s-" + level : "");
}

function renderStatus(st) {
  const cams = st.cameras || [];
  const badCams = cams.filter((c) => c.state !== "ok" && c.state !== "starting");
  setItem("#st-cameras", "CAMERAS " + (cams.length ? cams.map((c) => `${c.id} ${String(c.state).toUpperCase()}`).join(" · ") : "none"),
    cams.length === 0 || badCams.length ? "bad" : "ok");
  const gps = st.gps || {};
  setItem("#st-gps", gps.has_fix ? `GPS ${gps.mode === 3 ? "3D" : "2D"} FIX` : "NO GPS FIX", gps.has_fix ? "ok" : "warn");
  const lists = st.hotlist || [];
  const worst = lists.some((l) => l.freshness === "stale") ? "bad" : lists.some((l) => l.freshness === "aging") ? "warn" : "ok";
  setItem("#st-hotlist", "HOTLIST " + (lists.length ? lists.map((l) => `${l.list.replace(/_/g, " ")} ${fmtAge(l.age_s)}`).join(" · ") : "none loaded"),
    lists.length ? worst : "bad");
  const refused = st.feed_refused;
  setItem("#st-feed", refused ? `HOTLIST UPDATE REFUSED: ${refused.cause}` : "", refused ? "bad" : "");
  const b = st.backlog || {};
  const backlog = (b.hits || 0) + (b.reads || 0) + (b.images || 0);
  setItem("#st-backlog", `UPLOAD BACKLOG ${b.hits || 0} hits · ${b.reads || 0} reads · ${b.images || 0} images`, backlog > 500 ? "warn" : "ok");
  const tone = st.alert;
  if (tone) setItem("#st-tone", "TONE " + String(tone.state).toUpperCase(), tone.state === "ok" ? "ok" : "bad");
  else setItem("#st-tone", "TONE n/a", "warn");
  if (st.error) setItem("#st-cameras", st.error, "bad");
  const banner = $("#stale-banner");
  const stale = lists.filter((l) => l.freshness === "stale");
  if (stale.length) {
    banner.textContent = "HOTLIST STALE: " + stale.map((l) => `${l.list.replace(/_/g, " ")} (${fmtAge(l.age_s)} old)`).join(", ") +
      " — confirm every hit with dispatch before acting";
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
}

// ------------------------------------------------------------------ hits

function plateWithDiffs(text, positions) {
  const wrap = el("div", "plate");
  const diff = new Set(positions || []);
  for (let i = 0; i < text.length; i++) {
    if (diff.has(i)) wrap.appendChild(el("mark", "diff", text[i]));
    else wrap.appendChild(document.createTextNode(text[i]));
  }
  // A missing character: the position is past the end of what was read.
  if ((positions || []).some((p) => p >= text.length)) wrap.appendChild(el("mark", "diff", "_"));
  return wrap;
}

function addField(dl, label, value) {
  if (value === null || value === undefined || value === "") return;
  dl.appendChild(el("dt", null, label));
  dl.appendChild(el("dd", null, value));
}

function renderHit(h) {
  const card = el("article", "hit");
  card.dataset.hitId = h.hit_id;
  const head = el("div", "hit-head");
  head.appendChild(el("span", "list-label", h.list_label));
  head.appendChild(el("span", "match " + h.match_kind, h.match_kind === "exact" ? "EXACT MATCH" : "APPROXIMATE MATCH"));
  head.appendChild(el("span", "when", `${fmtTime(h.seen_at || h.matched_at)} · camera ${h.camera || "?"}`));
  card.appendChild(head);
  card.appendChild(el("div", "vcr", "VISUAL CONFIRMATION REQUIRED"));
  if (h.stale) card.appendChild(el("div", "stale-hit", `LIST STALE — ${fmtAge(h.list_age_s)} since refresh: confirm with dispatch`));
  if (h.retroactive) card.appendChild(el("div", "retro", "EARLIER READ matched a newly listed entry"));

  const plates = el("div", "plates");
  const read = el("div", "plate-box read");
  read.appendChild(el("div", "cap", "Read"));
  read.appendChild(plateWithDiffs(h.read_plate || "?", h.differing_positions));
  read.appendChild(el("div", "conf", h.confidence === null ? "confidence ?" : `confidence ${Math.round(h.confidence * 100)}%`));
  plates.appendChild(read);
  const listed = el("div", "plate-box listed");
  listed.appendChild(el("div", "cap", "Listed"));
  const sameLength = h.entry.plate.length === (h.read_plate || "").length;
  listed.appendChild(plateWithDiffs(h.entry.plate, sameLength ? h.differing_positions : []));
  listed.appendChild(el("div", "state-line", "state " + (h.entry.state || "any")));
  plates.appendChild(listed);
  card.appendChild(plates);
  if (h.state_mismatch) card.appendChild(el("div", "state-warn mismatch", `STATE MISMATCH: listed ${h.entry.state}, read ${h.read_state}`));
  else if (h.entry.state && !h.read_state) card.appendChild(el("div", "state-warn", `State not read: check the plate is ${h.entry.state}`));

  const images = el("div", "images");
  const f1 = el("figure");
  const crop = el("img", "crop");
  crop.alt = "plate crop";
  crop.src = h.crop_url;
  f1.appendChild(crop);
  f1.appendChild(el("figcaption", null, "Plate crop"));
  const f2 = el("figure");
  const ctx = el("img", "context");
  ctx.alt = "context";
  ctx.src = h.context_url;
  f2.appendChild(ctx);
  f2.appendChild(el("figcaption", null, h.context_is_crop ? "Context (enlarged crop: no wider frame stored)" : "Context"));
  images.appendChild(f1);
  images.appendChild(f2);
  card.appendChild(images);

  const e = h.entry;
  const dl = el("dl", "record");
  const vehicle = [e.vehicle_year, e.color, e.make, e.model].filter((x) => x !== null && x !== undefined && x !== "").join(" ");
  addField(dl, "Vehicle", vehicle || "not described");
  addField(dl, "Reason", e.reason);
  addField(dl, "Description", e.description);
  addField(dl, "Agency", e.agency);
  addField(dl, "Record", e.record_id);
  addField(dl, "Entered by", e.officer);
  addField(dl, "List", `${h.list_label} · priority ${h.priority}`);
  addField(dl, "List age", `${fmtAge(h.list_age_s)} (${h.freshness})`);
  if (h.gps) addField(dl, "Position", `${h.gps.lat.toFixed(5)}, ${h.gps.lon.toFixed(5)}`);
  card.appendChild(dl);

  const note = el("textarea", "note");
  note.placeholder = "Note (optional)";
  note.maxLength = 2000;
  const answers = el("div", "answers");
  for (const a of mdt.answers) {
    const b = el("button", "answer-button " + a, ANSWER_LABELS[a] || a);
    b.type = "button";
    b.dataset.answer = a;
    b.addEventListener("click", () => submitAnswer(h.hit_id, a, note.value));
    answers.appendChild(b);
  }
  card.appendChild(answers);
  card.appendChild(note);
  card.appendChild(el("div", "answer-state"));
  return card;
}

function upsertHit(h) {
  const known = mdt.hits.get(h.hit_id);
  if (known) {
    for (const a of h.answers || []) addAnswer(a);
    return;
  }
  mdt.hits.set(h.hit_id, { ...h, answers: [] });
  const card = renderHit(h);
  const list = $("#hits");
  list.insertBefore(card, list.firstChild);
  window.mdtHitShown[h.hit_id] = nowMs();
  requestAnimationFrame(() => { window.mdtHitPainted[h.hit_id] = nowMs(); });
  for (const a of h.answers || []) addAnswer(a);
  refreshCounts();
}

function cardFor(hitId) { return document.querySelector(`article.hit[data-hit-id="${CSS.escape(hitId)}"]`); }

function addAnswer(a) {
  const h = mdt.hits.get(a.hit_id);
  if (!h) return;
  if (!h.answers.some((x) => x.answer_id === a.answer_id)) h.answers.push(a);
  const card = cardFor(a.hit_id);
  if (!card) return;
  card.classList.add("answered");
  const st = $(".answer-state", card);
  st.className = "answer-state saved";
  st.textContent = `ANSWERED: ${ANSWER_LABELS[a.answer] || a.answer} — ${a.officer} at ${fmtTime(a.answered_at)}` + (a.note ? ` — “${a.note}”` : "");
  refreshCounts();
}

function refreshCounts() {
  let open = 0;
  for (const h of mdt.hits.values()) if (!h.answers.length) open++;
  $("#unanswered-count").textContent = open ? String(open) : "";
  $("#no-hits").hidden = mdt.hits.size > 0;
}

// Answers are kept (also across a reload) until the unit has stored them or refused them.
function pending() {
  try { return JSON.parse(localStorage.getItem(PENDING_KEY) || "[]"); } catch (err) { return []; }
}
function savePending(list) { localStorage.setItem(PENDING_KEY, JSON.stringify(list)); }

function submitAnswer(hitId, answer, note) {
  const item = { hit_id: hitId, answer, note: note || null, answer_id: uuid4() };
  savePending([...pending(), item]);
  const card = cardFor(hitId);
  if (card) {
    const st = $(".answer-state", card);
    st.className = "answer-state";
    st.textContent = `Saving: ${ANSWER_LABELS[answer] || answer}…`;
  }
  flushPending();
}

async function flushPending() {
  clearTimeout(mdt.retryTimer);
  if (!mdt.csrf) return;
  let retry = false;
  for (const item of pending()) {
    const r = await api("POST", `/api/hits/${encodeURIComponent(item.hit_id)}/answer`,
      { answer: item.answer, note: item.note, answer_id: item.answer_id });
    const card = cardFor(item.hit_id);
    if (r.ok) {
      savePending(pending().filter((x) => x.answer_id !== item.answer_id));
      addAnswer(r.data.answer);
    } else if (r.status === 0 || r.status >= 500 || r.status === 401 || r.status === 403) {
      retry = true; // kept: sent again when the unit answers or after the officer logs in again
      if (card) {
        const st = $(".answer-state", card);
        st.className = "answer-state failed";
        st.textContent = `NOT SAVED YET (${r.data.error || r.status}) — retrying`;
      }
      if (r.status === 403) {
        const s = await api("GET", "/api/session");
        if (s.ok) mdt.csrf = s.data.csrf_token;
      }
      break;
    } else {
      savePending(pending().filter((x) => x.answer_id !== item.answer_id));
      if (card) {
        const st = $(".answer-state", card);
        st.className = "answer-state failed";
        st.textContent = `REFUSED: ${r.data.error || r.status}`;
      }
    }
  }
  if (retry) mdt.retryTimer = setTimeout(flushPending, 2000);
}

// ------------------------------------------------------------------ forms

function formBody(form) {
  const out = {};
  for (const [k, v] of new FormData(form).entries()) out[k] = String(v).trim();
  if (out.hours !== undefined) out.hours = Number(out.hours || 8);
  return out;
}

async function searchReads(ev) {
  ev.preventDefault();
  const body = formBody(ev.target);
  const err = $("#search-error");
  err.textContent = "";
  const tbody = $("#search-results tbody");
  tbody.textContent = "";
  const r = await api("POST", "/api/search", body);
  if (!r.ok) { err.textContent = r.data.error || `refused (${r.status})`; return; }
  for (const read of r.data.reads) {
    const tr = el("tr");
    tr.appendChild(el("td", "plate-cell", read.plate));
    tr.appendChild(el("td", null, new Date(read.seen_at * 1000).toLocaleString()));
    tr.appendChild(el("td", null, read.camera));
    tr.appendChild(el("td", null, Math.round(read.confidence * 100) + "%"));
    tr.appendChild(el("td", null, read.lat === null ? "no fix" : `${read.lat.toFixed(5)}, ${read.lon.toFixed(5)}`));
    const td = el("td");
    const img = el("img");
    img.alt = "crop";
    img.src = read.crop_url;
    td.appendChild(img);
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
  if (!r.data.reads.length) err.textContent = `no reads in the last ${r.data.hours} h`;
}

async function loadBolos() {
  const r = await api("GET", "/api/bolos");
  const ul = $("#bolo-list");
  ul.textContent = "";
  if (!r.ok) return;
  for (const b of r.data.bolos) {
    const li = el("li", null, `${b.plate} ${b.state || ""} — ${b.reason || ""} ${b.description ? "(" + b.description + ")" : ""} — by ${b.officer}, until ${new Date(b.expires_at * 1000).toLocaleString()} `);
    const rm = el("button", "small", "Remove");
    rm.type = "button";
    rm.addEventListener("click", async () => {
      const reason = prompt(`Reason for removing the BOLO on ${b.plate}?`);
      if (!reason) return;
      const res = await api("POST", "/api/bolos/remove", { plate: b.plate, state: b.state, reason });
      if (!res.ok) alert(res.data.error || "refused");
      loadBolos();
    });
    li.appendChild(rm);
    ul.appendChild(li);
  }
}

async function loadSuppressions() {
  const r = await api("GET", "/api/suppressions");
  const ul = $("#suppress-list-items");
  ul.textContent = "";
  if (!r.ok) return;
  for (const s of r.data.suppressions) {
    const li = el("li", null, `#${s.id} ${s.plate}${s.entry_plate ? " vs " + s.entry_plate : ""}${s.list_kind ? " on " + s.list_kind : ""} — ${s.reason} — by ${s.officer}, until ${new Date(s.expires_at * 1000).toLocaleString()} `);
    const rm = el("button", "small", "End");
    rm.type = "button";
    rm.addEventListener("click", async () => {
      const reason = prompt(`Reason for ending suppression #${s.id}?`);
      if (!reason) return;
      const res = await api("POST", `/api/suppressions/${s.id}/remove`, { reason });
      if (!res.ok) alert(res.data.error || "refused");
      loadSuppressions();
    });
    li.appendChild(rm);
    ul.appendChild(li);
  }
}

function entryForm(form, path, reload) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const err = $(".form-error", form);
    err.textContent = "";
    const r = await api("POST", path, formBody(form));
    if (!r.ok) { err.textContent = r.data.error || `refused (${r.status})`; return; }
    form.reset();
    reload();
  });
}

function showView(id) {
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== id;
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.view === id);
  if (id === "bolo-view") loadBolos();
  if (id === "suppress-view") loadSuppressions();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("#login-error").textContent = "";
    const r = await api("POST", "/api/login", { officer_id: $("#officer-id").value, pin: $("#pin").value });
    $("#pin").value = "";
    if (!r.ok) { $("#login-error").textContent = r.data.error || `refused (${r.status})`; return; }
    start(r.data);
  });
  $("#logout").addEventListener("click", async () => {
    await api("POST", "/api/logout", {});
    showLogin("logged out");
  });
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => showView(t.dataset.view));
  $("#search-form").addEventListener("submit", searchReads);
  entryForm($("#bolo-form"), "/api/bolos", loadBolos);
  entryForm($("#suppress-form"), "/api/suppressions", loadSuppressions);
  const s = await api("GET", "/api/session");
  if (s.ok) start(s.data);
  else showLogin("");
});
