// The Runnel console: polls /api/v1/cluster on the node that served this page once a
// second and redraws. No framework, no build step, nothing loaded from elsewhere; all text
// goes in through textContent. Stable data-* attributes let tests read the DOM.
"use strict";

(() => {
  const PERIOD_MS = 1000;
  // Longer than the server's peer timeout (400 ms), so a slow peer does not fail the page.
  const TIMEOUT_MS = 3000;
  let previous = null; // the last view's byte counters and when it was taken, for rates
  let lastOk = 0;
  let shown = null; // the last view drawn, its node set down and its rates, for redraws

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, String(v));
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  const clock = (ms) => new Date(ms).toLocaleTimeString();

  function rate(bytesPerS) {
    if (bytesPerS === null) return "…";
    const units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let v = bytesPerS, i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
  }

  // Per topic: the bytes per second produced and fetched since the last view, summed over
  // the nodes seen both times. A counter that went down (the node restarted) counts as 0.
  function rates(view, now) {
    const out = {};
    for (const t of view.topics) {
      if (!previous) { out[t.name] = [null, null]; continue; }
      const dt = (now - previous.at) / 1000;
      let produced = 0, fetched = 0;
      for (const [node, b] of Object.entries(t.bytes)) {
        const before = (previous.bytes[t.name] || {})[node];
        if (!before) continue;
        produced += Math.max(0, b.produced - before.produced);
        fetched += Math.max(0, b.fetched - before.fetched);
      }
      out[t.name] = dt > 0 ? [produced / dt, fetched / dt] : [null, null];
    }
    return out;
  }

  function renderNodes(view) {
    const down = new Set(view.nodes.filter((n) => n.state !== "up").map((n) => n.id));
    const cards = view.nodes.map((n) => {
      const tags = [];
      for (const r of n.roles) tags.push(el("span", { class: "tag" }, r));
      if (n.controller_leader) tags.push(el("span", { class: "tag leader" }, "controller leader"));
      if (n.fenced) tags.push(el("span", { class: "tag fenced" }, "fenced"));
      if (n.state === "up" && n.ready === false) tags.push(el("span", { class: "tag notready" }, "not ready"));
      const details = [];
      if (n.http) details.push(el("div", { class: "detail" }, `http ${n.http}`));
      if (n.raft_state) details.push(el("div", { class: "detail" }, `raft ${n.raft_state}, term ${n.raft_term}`));
      if (n.broker_epoch !== null && n.broker_epoch !== undefined) {
        details.push(el("div", { class: "detail" }, `broker epoch ${n.broker_epoch}`));
      }
      if (n.not_ready) details.push(el("div", { class: "detail" }, n.not_ready));
      if (n.error) details.push(el("div", { class: "detail" }, n.error));
      return el("div", {
        class: "node",
        "data-node-id": n.id,
        "data-node-state": n.state,
        "data-controller-leader": n.controller_leader ? "true" : "false",
        "data-fenced": n.fenced ? "true" : "false",
      },
      el("span", { class: "state" }, n.state),
      el("div", { class: "title" }, `node ${n.id}`),
      el("div", {}, ...tags),
      ...details);
    });
    $("nodes").replaceChildren(...cards);
    return down;
  }

  function ids(list, down) {
    const span = el("span");
    list.forEach((id, i) => {
      if (i > 0) span.append(",");
      span.append(el("span", { class: down.has(id) ? "down" : "" }, id));
    });
    return span;
  }

  function renderTopics(view, down, topicRates) {
    const showInternal = $("show-internal").checked;
    const rows = [];
    for (const t of view.topics) {
      if (t.internal && !showInternal) continue;
      const [produced, fetched] = topicRates[t.name] || [null, null];
      t.partitions.forEach((p, i) => {
        const classes = [p.offline ? "offline" : "", p.under_replicated ? "under-replicated" : ""];
        rows.push(el("tr", {
          class: classes.join(" ").trim(),
          "data-topic": t.name,
          "data-partition": p.partition,
          "data-leader": p.leader === null ? "none" : p.leader,
          "data-leader-epoch": p.leader_epoch,
          "data-under-replicated": p.under_replicated ? "true" : "false",
        },
        el("td", {}, i === 0 ? t.name : ""),
        el("td", {}, p.partition),
        el("td", { class: p.leader !== null && down.has(p.leader) ? "down" : "" },
          p.leader === null ? "offline" : p.leader),
        el("td", {}, ids(p.replicas, down)),
        el("td", {}, ids(p.isr, down)),
        el("td", {}, p.leader_epoch),
        el("td", {}, p.high_watermark ?? "?"),
        el("td", {}, p.log_end ?? "?"),
        el("td", {}, i === 0 ? rate(produced) : ""),
        el("td", {}, i === 0 ? rate(fetched) : "")));
      });
    }
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { class: "muted", colSpan: 10 }, "no topics")));
    $("topics").tBodies[0].replaceChildren(...rows);
  }

  function renderGroups(view) {
    const rows = [];
    for (const g of view.groups) {
      const parts = g.partitions.length ? g.partitions : [null];
      parts.forEach((p, i) => {
        const first = i === 0;
        rows.push(el("tr", {
          "data-group": g.group_id,
          "data-topic": p ? p.topic : null,
          "data-partition": p ? p.partition : null,
          "data-lag": p && p.lag !== null ? p.lag : null,
        },
        el("td", {}, first ? g.group_id : ""),
        el("td", {}, first ? g.state : ""),
        el("td", {}, first ? g.coordinator : ""),
        el("td", {}, first ? g.members.length : ""),
        el("td", {}, p ? `${p.topic}/${p.partition}` : "no offsets"),
        el("td", {}, p && p.member ? p.member : ""),
        el("td", {}, p ? p.committed : ""),
        el("td", {}, p ? (p.end ?? "?") : ""),
        el("td", {}, p ? (p.lag ?? "?") : "")));
      });
    }
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { class: "muted", colSpan: 9 }, "no groups")));
    $("groups").tBodies[0].replaceChildren(...rows);
  }

  function banner(text, error) {
    const b = $("banner");
    b.textContent = text || "";
    b.hidden = !text;
    b.classList.toggle("error", Boolean(error));
  }

  function render(view) {
    const now = Date.now();
    const topicRates = rates(view, now);
    const bytes = {};
    for (const t of view.topics) bytes[t.name] = t.bytes;
    previous = { at: now, bytes };

    $("served-by").textContent = view.served_by;
    $("controller-leader").textContent = view.controller_leader ?? "none";
    $("controller-term").textContent = view.controller_term;
    $("metadata-version").textContent = view.metadata_version;
    const down = renderNodes(view);
    renderTopics(view, down, topicRates);
    shown = { view, down, topicRates };
    renderGroups(view);

    document.body.dataset.stale = view.stale ? "true" : "false";
    document.body.dataset.loaded = "true";
    document.body.dataset.controllerLeader = view.controller_leader ?? "none";
    banner(view.stale
      ? `Not current: ${view.stale_reason}. Below is what node ${view.served_by} last knew; it may be out of date.`
      : "", false);
  }

  async function refresh() {
    const started = Date.now();
    try {
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
      let view;
      try {
        const res = await fetch("/api/v1/cluster", { cache: "no-store", signal: abort.signal });
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        view = await res.json();
      } finally {
        clearTimeout(timer);
      }
      render(view);
      lastOk = Date.now();
      const stamp = $("last-refresh");
      stamp.textContent = clock(lastOk);
      stamp.dataset.refreshedMs = String(lastOk);
    } catch (e) {
      document.body.dataset.stale = "true";
      const since = lastOk ? `; the data below is from ${clock(lastOk)}` : "";
      banner(`Cannot reach the node serving this page (${e.message || e})${since}.`, true);
    } finally {
      setTimeout(refresh, Math.max(0, PERIOD_MS - (Date.now() - started)));
    }
  }

  $("show-internal").addEventListener("change", () => {
    if (shown) renderTopics(shown.view, shown.down, shown.topicRates);
  });
  refresh();
})();
