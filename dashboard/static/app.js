// chatscale dashboard: one page, no libraries, everything served by chatscale itself.
"use strict";

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const num = (v, d = 1) => (v === null || v === undefined ? "-" : Number(v).toLocaleString(undefined, { maximumFractionDigits: d, minimumFractionDigits: 0 }));
const ms = (v) => (v === null || v === undefined ? "-" : v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(1) + " ms");
let state = null;

// ---- the admin token: from the banner's URL fragment or typed in; kept for this tab only ----
(function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("chatscale-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  $("#token").value = sessionStorage.getItem("chatscale-token") || "";
  $("#token").addEventListener("input", (e) => sessionStorage.setItem("chatscale-token", e.target.value));
})();

function say(text, ok) {
  const el = $("#status");
  el.textContent = text;
  el.className = ok ? "ok" : "error";
}

async function act(path, body) {
  const res = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Admin-Token": $("#token").value },
    body: JSON.stringify(body || {}),
  });
  let doc = {};
  try { doc = await res.json(); } catch (e) { /* an empty answer */ }
  if (!res.ok) {
    say(`refused (${res.status}): ${doc.error || res.statusText}`, false);
    throw new Error(doc.error || res.statusText);
  }
  return doc;
}

// ---- the topology --------------------------------------------------------------------------

function box(id, x, y, w, h, title, lines, cls) {
  let t = `<g class="box ${cls || ""}" id="box-${esc(id)}" data-box="${esc(id)}" transform="translate(${x},${y})">`;
  t += `<rect width="${w}" height="${h}"></rect><text class="title" x="8" y="17">${esc(title)}</text>`;
  lines.forEach((ln, i) => {
    const [label, value, key] = ln;
    t += `<text x="8" y="${35 + i * 15}"><tspan class="dim">${esc(label)}</tspan> <tspan ${key ? `data-fig="${esc(key)}"` : ""}>${esc(value)}</tspan></text>`;
  });
  return t + "</g>";
}

function edge(x1, y1, x2, y2, cls) {
  const mx = (x1 + x2) / 2;
  return `<path class="edge ${cls || ""}" d="M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}"></path>`;
}

function layout(s) {
  const f = s.figures || { gateways: [], workers: [], queues: [] };
  const procs = s.processes || [];
  const pos = {};
  let svg = `<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#4b6478"></path></marker></defs>`;
  const chat = s.chat;
  // clients
  const conns = f.gateways.reduce((a, g) => a + (g.connections || 0), 0);
  pos.clients = [10, 150, 120, 90];
  svg += box("clients", ...pos.clients, "clients", [["connections", num(conns, 0)], ["chat", chat && chat.running ? "running" : "off"], ["", ""]]);
  // gateways
  const gh = 112, gy0 = 40;
  f.gateways.forEach((g, i) => {
    const y = gy0 + i * (gh + 14);
    pos["gw:" + g.id] = [170, y, 170, gh];
    svg += box(g.id, 170, y, 170, gh, g.id + (g.alive ? "" : " (down)"), [
      ["conns", num(g.connections, 0), `gw-conns-${g.id}`],
      ["frames in/out/s", `${num(g.frames_in_s)} / ${num(g.frames_out_s)}`],
      ["deliveries/s", num(g.deliveries_s), `gw-deliv-${g.id}`],
      ["publish p99", ms(g.publish_p99_ms)],
      ["recv→deliver p99", ms(g.deliver_p99_ms)],
    ], g.alive ? "" : "down");
  });
  // ingest streams
  const ingest = f.queues.filter((q) => q.stream.includes("ingest"));
  const lines = ingest.map((q) => [q.stream.split(":").slice(-1)[0] + " len/lag/pend", `${num(q.length, 0)} / ${num(q.lag, 0)} / ${num(q.pending, 0)}`]);
  lines.push(["dead letters", num(f.dead_letters, 0), "dead-letters"]);
  pos.ingest = [380, 60, 165, 35 + lines.length * 15];
  svg += box("ingest", ...pos.ingest, "ingest streams", lines);
  // workers
  const wh = 112;
  const workerProcs = procs.filter((p) => p.role === "worker");
  f.workers.forEach((w, i) => {
    const y = 30 + i * (wh + 14);
    const p = workerProcs.find((pp) => pp.name === w.id);
    const alive = !p || p.alive;
    pos["worker:" + w.id] = [580, y, 195, wh];
    const short = w.id.replace(/-\d+$/, "");
    svg += box(w.id, 580, y, 195, wh, short + (p && p.restarts ? ` (restarted ×${p.restarts})` : "") + (alive ? "" : " (down)"), [
      ["shards", (w.shards || []).join(",") || "-"],
      ["msg/s", num(w.messages_s), `worker-rate-${short}`],
      ["hot / history p99", `${ms(w.hot_p99_ms)} / ${ms(w.history_p99_ms)}`],
      ["fanout p99", ms(w.fanout_p99_ms)],
      ["rejected / dead", `${num(w.rejected, 0)} / ${num(w.dead_lettered, 0)}`],
    ], alive ? "" : "down");
  });
  // valkey and history
  const vk = procs.find((p) => p.role === "valkey") || {};
  const ages = f.message_age_p99_ms || {};
  pos.valkey = [805, 40, 190, 100];
  svg += box("valkey", ...pos.valkey, "Valkey" + (vk.paused_s ? ` (paused ${vk.paused_s}s)` : ""), [
    ["streams, hot cache, routes", ""],
    ["age p99 worker read", ms(ages.worker_read)],
    ["age p99 worker done", ms(ages.worker_done)],
    ["restarts", num(vk.restarts || 0, 0)],
  ], vk.paused_s ? "paused" : vk.alive === false ? "down" : "");
  const storeKind = (s.storage_url || "").split(":")[0];
  const paused = procs.find((p) => p.role === "store");
  pos.history = [805, 170, 190, 70];
  svg += box("history", ...pos.history, "history (" + storeKind + ")", [
    ["backlog", num(f.workers.reduce((a, w) => a + (w.backlog || 0), 0), 0)],
    ["stored (chat)", chat ? num(chat.stored, 0) : "-"],
  ], paused && paused.paused_s ? "paused" : "");
  // presence
  const pr = f.presence;
  const pq = f.queues.find((q) => q.stream.includes("presence"));
  pos.presence = [380, 330, 190, 112];
  svg += box("presence", ...pos.presence, "presence", pr ? [
    ["online users", num(pr.online_users, 0)],
    ["changes/s", num(pr.changes_s)],
    ["deliveries/s (raw)", `${num(pr.deliveries_s)} (${num(pr.raw_deliveries_s)})`],
    ["per change", num(pr.amplification)],
    ["in: len/lag/pend", pq ? `${num(pq.length, 0)} / ${num(pq.lag, 0)} / ${num(pq.pending, 0)}` : "-"],
  ] : [["no stats in Redis", ""]]);
  // edges: the message path
  const right = (p) => [p[0] + p[2], p[1] + p[3] / 2];
  const left = (p) => [p[0], p[1] + p[3] / 2];
  Object.keys(pos).filter((k) => k.startsWith("gw:")).forEach((k) => {
    svg += edge(...right(pos.clients), ...left(pos[k]));
    svg += edge(...right(pos[k]), ...left(pos.ingest));
    svg += edge(pos[k][0] + pos[k][2] / 2, pos[k][1] + pos[k][3], pos.presence[0], pos.presence[1] + 30, "back");
  });
  Object.keys(pos).filter((k) => k.startsWith("worker:")).forEach((k) => {
    svg += edge(...right(pos.ingest), ...left(pos[k]));
    svg += edge(...right(pos[k]), ...left(pos.valkey));
    svg += edge(...right(pos[k]), ...left(pos.history));
  });
  // fan-out back to the gateways: one entry per gateway's delivery stream
  const lastW = Object.keys(pos).filter((k) => k.startsWith("worker:")).map((k) => pos[k]).pop();
  const lastG = Object.keys(pos).filter((k) => k.startsWith("gw:")).map((k) => pos[k]).pop();
  if (lastW && lastG) {
    const y = Math.max(lastW[1] + lastW[3], 290) + 170;
    svg += `<path class="edge back" d="M${lastW[0] + 60},${lastW[1] + lastW[3]} L${lastW[0] + 60},${y} L${lastG[0] + 40},${y} L${lastG[0] + 40},${lastG[1] + lastG[3]}"></path>`;
    svg += `<text x="${lastG[0] + 50}" y="${y - 6}" fill="#8a9aa8" font-size="11">fan-out: one entry per gateway (cs:deliver:{gateway}), then XACK</text>`;
  }
  svg += badges(s, pos);
  $("#topology").innerHTML = svg;
}

// where each traced hop happened
function hopBox(hop, trace, pos) {
  const gwOf = (who) => {
    const url = (who || "").split(" via ")[1] || "";
    const g = ((state && state.figures && state.figures.gateways) || []).find((gg) => gg.url === url);
    return g ? "gw:" + g.id : null;
  };
  // the worker holding the lease of the message's shard, as its health key says
  const owner = ((state && state.figures && state.figures.workers) || []).find((w) => (w.shards || []).includes(trace.shard));
  const firstWorker = owner ? "worker:" + owner.id : Object.keys(pos).find((k) => k.startsWith("worker:"));
  return {
    gateway_receive: gwOf(trace.from), gateway_publish: gwOf(trace.from),
    worker_read: firstWorker, worker_checks: firstWorker, fanout: firstWorker,
    hot_write: "valkey", history_write: "history",
    gateway_deliver: gwOf(trace.to), client_receive: "clients",
  }[hop] || null;
}

function badges(s, pos) {
  const trace = (s.traces || [])[0];
  if (!trace) return "";
  let out = "";
  const where = trace.hops.map((h) => hopBox(h.hop, trace, pos));
  const total = {}, seen = {};
  where.forEach((k) => { if (k) total[k] = (total[k] || 0) + 1; });
  trace.hops.forEach((h, i) => {
    const k = where[i];
    if (!k || !pos[k]) return;
    const p = pos[k];
    const n = (seen[k] = (seen[k] || 0) + 1) - 1;
    const x = p[0] + p[2] - 12 - (total[k] - 1 - n) * 20;
    out += `<g class="badge" data-hop="${esc(h.hop)}"><title>${esc(h.hop)} +${h.delta_ms.toFixed(2)} ms</title><circle cx="${x}" cy="${p[1] - 2}" r="9"></circle><text x="${x}" y="${p[1] + 2}">${i + 1}</text></g>`;
  });
  return out;
}

// ---- panels --------------------------------------------------------------------------------

function renderTrace(trace, el) {
  const max = Math.max(...trace.hops.map((h) => h.delta_ms), 0.001);
  const pos = {};
  let t = `<p class="hint">message ${esc(trace.id)}: ${esc(trace.from)} → ${esc(trace.to)}, total <b id="trace-total">${trace.total_ms.toFixed(2)} ms</b></p>`;
  trace.hops.forEach((h, i) => {
    t += `<div class="hop" data-hop="${esc(h.hop)}"><span>${i + 1}. ${esc(h.hop)}</span><span class="where">+${h.delta_ms.toFixed(3)} ms</span><span class="bar" style="width:${(100 * h.delta_ms) / max}%"></span><span class="where">${h.t_ms.toFixed(2)} ms</span></div>`;
  });
  if (trace.missing && trace.missing.length) t += `<p class="hint">hops not stamped: ${esc(trace.missing.join(", "))}</p>`;
  el.innerHTML = t;
  return pos;
}

function renderLedger(c) {
  const body = $("#ledger tbody");
  if (!c) { body.innerHTML = "<tr><td>no built-in chat in this run</td></tr>"; return; }
  $("#chat-toggle").textContent = c.running ? "stop chat" : "start chat";
  $("#chat-about").textContent = `${c.users.join(" and ")} post in ${c.channel} (one message each every ~1.2 s); judged up to 5 s ago, younger messages are in flight.` + (Object.keys(c.connected).length ? " On: " + Object.entries(c.connected).map(([u, url]) => `${u} ${url}`).join(", ") : "");
  const rows = [
    ["acknowledged", c.acknowledged, "", "MESSAGE_ACK received: queued durably"],
    ["delivered", `${c.delivered} / ${c.expected}`, "", "first receipts of judged messages / receipts owed"],
    ["stored", c.stored, "", `acknowledged messages found in history (${c.not_yet_stored} not yet)`],
    ["lost", c.lost, c.lost ? "bad" : "good", "owed, neither delivered live nor recovered from history"],
    ["duplicated", c.duplicated + c.stored_twice, c.duplicated + c.stored_twice ? "bad" : "good", "extra copies received, or stored twice"],
    ["in flight", c.in_flight, "", "younger than 5 s: not judged yet"],
    ["refused: slowmode", c.refused_slowmode, "", "sends the gateway refused (slowmode)"],
    ["refused: other", c.refused_other, "", "rate limits and other refusals"],
    ["UNAVAILABLE retries", c.unavailable_retries, "", "resent with the same nonce"],
    ["unacknowledged", c.unacknowledged, "", "the socket closed under the send: maybe queued (then it is stored and delivered), never judged lost"],
    ["reconnects / recovered", `${c.reconnects} / ${c.recovered}`, "", "a dead gateway: IDENTIFY elsewhere, reload history"],
  ];
  body.innerHTML = rows.map(([k, v, cls, about]) => `<tr class="${cls}" id="ledger-${k.split(/[ :/]/)[0]}"><td>${esc(k)}</td><td>${esc(v)}</td><td class="hint">${esc(about)}</td></tr>`).join("");
}

function renderFaults(list) {
  $("#fault-log").innerHTML = list.map((f) => `<li data-kind="${esc(f.kind)}">${new Date(f.at * 1000).toLocaleTimeString()} <b>${esc(f.kind)}</b> ${esc(f.text)}</li>`).join("");
}

function fillSelect(sel, items) {
  const el = $(sel);
  const key = items.map((i) => i.value + i.label).join("|");
  if (el.dataset.key === key) return;
  const keep = el.value;
  el.innerHTML = items.map((i) => `<option value="${i.value}">${esc(i.label)}</option>`).join("");
  if ([...el.options].some((o) => o.value === keep)) el.value = keep;
  el.dataset.key = key;
}

function render(s) {
  state = s;
  const f = s.figures || { gateways: [], workers: [], queues: [] };
  const sum = (xs, k) => xs.reduce((a, x) => a + (x[k] || 0), 0);
  $("#sum-messages").textContent = num(sum(f.workers, "messages_s"));
  $("#sum-deliveries").textContent = num(sum(f.gateways, "deliveries_s"));
  $("#sum-connections").textContent = num(sum(f.gateways, "connections"), 0);
  $("#sum-age").textContent = ms((f.message_age_p99_ms || {}).delivered);
  if (f.metrics_at) {
    const ago = Math.max(0, (s.sent_at || Date.now() / 1000) - f.metrics_at);
    $("#fig-ages").textContent = `queues, workers' messages/s, presence and dead letters read from Valkey every second (over the last ${num(f.interval_s, 1)} s); connections, frames, deliveries and p99s from each process's /metrics, scraped ${num(ago, 0)} s ago, over ${num(f.metrics_interval_s, 1)} s`;
  }
  layout(s);
  renderLedger(s.chat);
  renderFaults(s.faults || []);
  const traces = s.traces || [];
  if (traces.length) renderTrace(traces[0], $("#trace-latest"));
  $("#trace-list").innerHTML = traces.slice(1).map((t) => `<li>${new Date(t.at * 1000).toLocaleTimeString()} ${esc(t.id)}: ${t.total_ms.toFixed(2)} ms over ${t.hops.length} hops</li>`).join("");
  const procs = s.processes || [];
  fillSelect("#worker-index", procs.filter((p) => p.role === "worker").map((p) => ({ value: p.index, label: `worker-${p.index}` })));
  fillSelect("#gateway-index", procs.filter((p) => p.role === "gateway" && p.alive).map((p) => ({ value: p.index, label: `gw-${p.index}` })));
  $("#pause-store").disabled = !(s.storage_url || "").startsWith("cassandra");
  $("#pause-store").title = $("#pause-store").disabled ? "history is SQLite, a file in the worker processes: nothing separate to pause" : "";
  // faults this dashboard cannot inject (chatscale dashboard supervises no process): say why
  const un = s.unavailable || {};
  document.querySelectorAll("button[data-fault]").forEach((b) => {
    if (un[b.dataset.fault]) { b.disabled = true; b.title = un[b.dataset.fault]; b.classList.add("unavailable"); }
  });
  $("#fault-unavailable").textContent = Object.entries(un).map(([k, v]) => `${k} unavailable: ${v}`).join(" · ");
  if (s.error) say(s.error, false);
}

// ---- live updates (server-sent events) -------------------------------------------------------

let lastFrame = 0;
function behind() {
  if (!lastFrame) return;
  const late = Math.max(0, Date.now() / 1000 - lastFrame);
  $("#live-dot").className = late < 3 ? "on" : "";
  $("#live-text").textContent = late < 3 ? `live, ${late.toFixed(1)} s behind` : `no frame for ${late.toFixed(0)} s`;
}
setInterval(behind, 1000);

function connect() {
  const es = new EventSource("/events");
  es.onmessage = (e) => {
    const s = JSON.parse(e.data);
    lastFrame = s.sent_at;
    behind();
    render(s);
    if (!s.error && $("#status").textContent.startsWith("collecting")) say("", true);
  };
  es.onerror = () => { $("#live-dot").className = ""; $("#live-text").textContent = "reconnecting…"; };
}

// ---- knobs and results ------------------------------------------------------------------------

async function loadKnobs() {
  const k = await (await fetch("/api/knobs")).json();
  $("#slowmode tbody").innerHTML = k.slowmode.map((c) => `<tr id="knob-${esc(c.name)}"><td>#${esc(c.name)}</td><td><b class="value">${c.slowmode_s}</b> s</td><td><input type="number" min="0" max="21600" value="${c.slowmode_s}"> <button data-channel="${esc(c.id)}">set</button></td></tr>`).join("");
  $("#settings tbody").innerHTML = k.settings.map((x) => `<tr><td><code>${esc(x.env)}</code></td><td>${esc(x.value)}</td><td>${esc(x.about)}</td></tr>`).join("");
}

async function loadResults() {
  const r = await (await fetch("/api/results")).json();
  for (const kind of ["lab", "loadtest"]) {
    $(`#${kind}-folder`).textContent = r[kind].folder;
    const items = r[kind].items;
    $(`#${kind}-results`).innerHTML = items.length ? items.map((i) => `<li>${i.page ? `<a target="_blank" href="/results/${kind}/${encodeURIComponent(i.name)}/">${esc(i.title)}</a>` : esc(i.title)} <span class="hint">${esc(i.finished || "")} ${esc(i.conclusion || "")}</span></li>`).join("") : `<li class="hint">none yet (${kind === "lab" ? "chatscale lab run" : "chatscale loadtest"})</li>`;
  }
}

document.addEventListener("click", async (e) => {
  const t = e.target;
  if (!(t instanceof HTMLButtonElement)) return;
  try {
    if (t.id === "trace-btn") {
      t.disabled = true;
      say("tracing…", true);
      const tr = await act("/api/trace");
      renderTrace(tr, $("#trace-latest"));
      if (state) { state.traces = [tr, ...(state.traces || [])]; layout(state); }
      say(`traced message ${tr.id}: ${tr.hops.length} hops, ${tr.total_ms.toFixed(2)} ms`, true);
    } else if (t.dataset.fault) {
      const kind = t.dataset.fault;
      const index = Number(kind === "kill-gateway" ? $("#gateway-index").value : $("#worker-index").value || 0);
      const r = await act("/api/fault", { kind, index, seconds: Number($("#pause-seconds").value) });
      say(r.text, true);
    } else if (t.dataset.channel) {
      const seconds = Number(t.parentElement.querySelector("input").value);
      const r = await act("/api/knob", { name: "slowmode", channel_id: t.dataset.channel, seconds });
      say(r.text, true);
      await loadKnobs();
    } else if (t.id === "chat-toggle") {
      const r = await act("/api/chat", { running: !(state && state.chat && state.chat.running) });
      say(r.running ? "chat started" : "chat stopped", true);
    }
  } catch (err) {
    /* shown by act() */
  } finally {
    if (t.id === "trace-btn") t.disabled = false;
  }
});

connect();
loadKnobs();
loadResults();
