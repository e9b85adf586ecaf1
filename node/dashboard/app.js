// The zerogrid dashboard: polls /api/cluster every second and redraws.
"use strict";
const $ = (id) => document.getElementById(id);
const bytes = (n) => {
  if (!n) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
};
const ago = (t, now) => {
  if (!t || t.startsWith("0001")) return "never";
  const s = (new Date(now) - new Date(t)) / 1000;
  return s < 1 ? "now" : s.toFixed(0) + " s ago";
};
const cell = (tr, text, cls) => {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
};

function draw(v) {
  $("meta").textContent = `as node ${v.node} sees it · table epoch ${v.epoch} · metadata leader ${v.meta_leader || "none"}` +
    (v.insecure ? " · INSECURE (no TLS)" : "");
  const body = $("nodes").tBodies[0];
  body.replaceChildren();
  for (const n of v.nodes) {
    const tr = document.createElement("tr");
    tr.id = "node-" + n.id;
    tr.dataset.state = n.state;
    cell(tr, n.id);
    const st = cell(tr, "");
    const span = document.createElement("span");
    span.className = "state " + n.state;
    span.textContent = n.state;
    st.appendChild(span);
    cell(tr, n.addr);
    cell(tr, (n.labels && n.labels.zone) || (n.caps.labels && n.caps.labels.zone) || "");
    cell(tr, n.caps.arch + (n.caps.goarm ? "v" + n.caps.goarm : ""));
    cell(tr, n.caps.cores, "num");
    cell(tr, bytes(n.caps.ram_total), "num");
    cell(tr, n.caps.fsync_p99_ns ? (n.caps.fsync_p99_ns / 1e6).toFixed(2) + " ms" : "–", "num");
    cell(tr, n.load.replicas, "num");
    cell(tr, n.load.leaders, "num");
    cell(tr, n.load.cpu.toFixed(0), "num");
    cell(tr, bytes(n.load.rss), "num");
    cell(tr, ago(n.load.reported_at, v.time));
    body.appendChild(tr);
  }
  const ring = $("ring");
  ring.replaceChildren();
  for (const p of v.partitions || []) {
    const d = document.createElement("div");
    d.className = "part" + (p.moving ? " moving" : "") + (p.leader ? "" : " noleader");
    d.id = "part-" + p.id;
    const b = document.createElement("b");
    b.textContent = "p" + p.id + (p.leader ? " ★" + p.leader : " no leader");
    d.appendChild(b);
    d.appendChild(document.createTextNode(p.replicas.join(" ")));
    if (p.moving) {
      d.appendChild(document.createElement("br"));
      d.appendChild(document.createTextNode((p.learner ? "+" + p.learner + " " : "") + (p.leaving ? "−" + p.leaving : "")));
    }
    if (p.lag !== undefined) {
      d.appendChild(document.createElement("br"));
      d.appendChild(document.createTextNode("lag here " + p.lag));
    }
    ring.appendChild(d);
  }
  const local = $("local").tBodies[0];
  local.replaceChildren();
  const rows = [
    ["scrub passes", v.integrity.scrub_passes || 0],
    ["corrupt entries (store / log)", (v.integrity.corrupt_entries || 0) + " / " + (v.integrity.corrupt_log_entries || 0)],
    ["quarantines / rebuilds", (v.integrity.quarantines || 0) + " / " + (v.integrity.rebuilds || 0)],
    ["job tasks run (ok / error)", (v.jobs.tasks_ok || 0) + " / " + (v.jobs.tasks_error || 0)],
    ["task attempts: retries / hedges / fallbacks", (v.jobs.attempts_retry || 0) + " / " + (v.jobs.attempts_hedge || 0) + " / " + (v.jobs.attempts_fallback || 0)],
    ["replica moves started (as metadata leader)", v.moves_started],
  ];
  for (const [k, val] of rows) {
    const tr = document.createElement("tr");
    cell(tr, k);
    cell(tr, String(val), "num");
    local.appendChild(tr);
  }
}

async function poll() {
  try {
    const r = await fetch("api/cluster", { cache: "no-store" });
    if (!r.ok) throw new Error(r.status + " " + r.statusText);
    draw(await r.json());
    $("error").textContent = "";
  } catch (e) {
    $("error").textContent = "cannot reach the node: " + e.message;
  }
  setTimeout(poll, 1000);
}
poll();
