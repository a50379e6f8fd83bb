// netplane dashboard: fetches /ui/data every 2 seconds and renders it.
//
// Plain JavaScript, no framework and nothing from another origin. Every
// string from the server goes into the page through textContent (or an
// attribute set with setAttribute / dataset), never as HTML, so a name in
// the cluster cannot become markup. Read-only: the page only GETs.
//
// Tables filter and paginate on the client, over the rows the document
// holds. The document is bounded (the server sends at most its limit of
// rows per table, with the totals); the filter text is also sent to the
// server on the next refresh, so a filter reaches rows past that limit.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const MAX_REFRESH_MS = 15000;
  const PAGE_SIZE = 25;
  const TABLES = ["services", "routes", "problems"];

  const view = {
    doc: null,
    previous: new Map(), // cell key -> last value, to mark the ones that changed
    seen: new Map(), // cell key -> value in this render
    filters: { services: "", routes: "", problems: "" },
    pages: { services: 0, routes: 0, problems: 0 },
    timer: null,
    inFlight: false,
    again: false,
    lastOk: 0,
    dnsFailures: null,
    upstreamFailing: false,
  };

  // -- small helpers -----------------------------------------------------------

  function $(id) {
    return document.getElementById(id);
  }

  // el("td", {className: "num", title: "x", data: {field: "requests"}}, "text", childNode, ...)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [key, value] of Object.entries(attrs)) {
        if (value === undefined || value === null) continue;
        if (key === "className") node.className = value;
        else if (key === "data") {
          for (const [d, v] of Object.entries(value)) node.dataset[d] = String(v);
        } else node.setAttribute(key, String(value));
      }
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      if (Array.isArray(child)) append(node, child);
      else if (child instanceof Node) node.appendChild(child);
      else node.appendChild(document.createTextNode(String(child)));
    }
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  function emptyRow(columns, text) {
    return el("tr", null, el("td", { className: "empty", colspan: columns }, text));
  }

  const intFormat = new Intl.NumberFormat("en-US");
  function fmtInt(n) {
    return n === null || n === undefined ? "–" : intFormat.format(n);
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return (i === 0 ? String(v) : v.toFixed(1)) + " " + units[i];
  }

  function fmtMs(v) {
    if (v === null || v === undefined) return "–";
    if (v < 1) return v.toFixed(2) + " ms";
    if (v < 1000) return v.toFixed(1) + " ms";
    return (v / 1000).toFixed(2) + " s";
  }

  function fmtDuration(seconds) {
    let s = Math.floor(seconds);
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    if (d) return d + "d " + h + "h " + m + "m";
    if (h) return h + "h " + m + "m " + s + "s";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function badge(text, kind, title) {
    return el("span", { className: "badge " + kind, title: title }, text);
  }

  // A number cell that flashes when its value differs from the last render.
  function counter(key, value, field, text) {
    const cell = el("td", { className: "num", data: { field: field } }, text === undefined ? fmtInt(value) : text);
    if (value !== null && value !== undefined) {
      const before = view.previous.get(key);
      if (before !== undefined && before !== value) cell.classList.add("changed");
      view.seen.set(key, value);
    }
    return cell;
  }

  function card(label, value, sub, cls) {
    return el(
      "div",
      { className: "card" },
      el("div", { className: "label" }, label),
      el("div", { className: "value" + (cls ? " " + cls : "") }, value),
      sub ? el("div", { className: "sub" }, sub) : null,
    );
  }

  function matches(filter, parts) {
    if (!filter) return true;
    return parts.join(" ").toLowerCase().includes(filter);
  }

  function normalFilter(text) {
    return text.trim().split(/\s+/).join(" ").toLowerCase();
  }

  // Renders the pager of `name` and returns the slice of `rows` on the current page.
  function paginate(name, rows) {
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    if (view.pages[name] >= pages) view.pages[name] = pages - 1;
    const page = view.pages[name];
    const pager = $(name + "-pager");
    const prev = el("button", { type: "button", "aria-label": "previous page" }, "‹ Prev");
    const next = el("button", { type: "button", "aria-label": "next page" }, "Next ›");
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
    prev.addEventListener("click", () => {
      view.pages[name] = Math.max(0, page - 1);
      render();
    });
    next.addEventListener("click", () => {
      view.pages[name] = page + 1;
      render();
    });
    const first = rows.length ? page * PAGE_SIZE + 1 : 0;
    const last = Math.min(rows.length, (page + 1) * PAGE_SIZE);
    pager.replaceChildren(prev, el("span", null, first + "–" + last + " of " + rows.length), next);
    return rows.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
  }

  // "Showing 200 of 10,000 matching services": when the server cut the table.
  function capNote(name, part, noun) {
    const note = $(name + "-note");
    const filtered = part.filter ? " matching “" + part.filter + "”" : "";
    if (part.matched > part.rows.length) {
      note.className = "note capped";
      note.textContent =
        "Showing the first " + fmtInt(part.rows.length) + " of " + fmtInt(part.matched) + " " + noun +
        filtered + " (of " + fmtInt(part.total) + " in all); type in the filter to reach the others.";
    } else {
      note.className = "note";
      note.textContent = fmtInt(part.matched) + " " + noun + filtered + (part.filter ? " (of " + fmtInt(part.total) + ")" : "") + ".";
    }
  }

  // -- summary -------------------------------------------------------------------

  function renderSummary(doc) {
    const s = doc.summary;
    $("version").textContent = "v" + doc.version;
    const ready = $("ready");
    ready.textContent = doc.ready ? "ready" : "not ready";
    ready.className = "badge " + (doc.ready ? "ok" : "bad");
    const problems = doc.problems.total + doc.problems.failedSyncs.length;
    $("nav-problems").textContent = problems ? String(problems) : "";

    const objects = Object.values(s.counts).reduce((a, b) => a + b, 0);
    $("summary-cards").replaceChildren(
      card("Uptime", fmtDuration(doc.uptime)),
      card("Objects", fmtInt(objects), fmtInt(s.counts.Service || 0) + " Services"),
      card("L4 connections", fmtInt(s.l4.connections), fmtInt(s.l4.active) + " active"),
      card("L4 bytes", fmtBytes(s.l4.bytes), fmtInt(s.l4.noEndpoint) + " without endpoint"),
      card("HTTP requests", fmtInt(s.http.requests)),
      card("DNS queries", doc.dns ? fmtInt(doc.dns.queries) : "off"),
      card("Problems", fmtInt(problems), null, problems ? "bad" : "ok"),
    );

    replaceRows(
      $("sources-table").tBodies[0],
      s.sources.length
        ? s.sources.map((src) =>
            el(
              "tr",
              { data: { source: src.name } },
              el("td", null, src.name),
              el("td", null, src.synced ? badge("synced", "ok") : badge("syncing", "warn")),
              el(
                "td",
                null,
                src.resources.length
                  ? src.resources.map((r) =>
                      el("span", { className: "line" + (r.reconnects ? " warn" : "") }, r.resource + ": " + r.lists + " / " + r.reconnects),
                    )
                  : el("span", { className: "muted" }, "–"),
              ),
            ),
          )
        : [emptyRow(3, "no sources (embedded)")],
    );

    const kinds = Object.entries(s.counts);
    replaceRows(
      $("counts-table").tBodies[0],
      kinds.length
        ? kinds.map(([kind, n]) => el("tr", null, el("td", null, kind), counter("count:" + kind, n, "count")))
        : [emptyRow(2, "no objects")],
    );

    replaceRows(
      $("listeners-table").tBodies[0],
      s.listeners.length
        ? s.listeners.map((l) => el("tr", null, el("td", null, l.plane), el("td", { className: "mono" }, l.address)))
        : [emptyRow(2, "no listeners")],
    );
    $("listeners-note").textContent =
      s.listenersTotal > s.listeners.length ? "Showing " + s.listeners.length + " of " + fmtInt(s.listenersTotal) + " listeners." : "";

    const workers = $("workers-table").tBodies[0];
    if (s.workers) {
      replaceRows(
        workers,
        s.workers.map((w) =>
          el(
            "tr",
            null,
            el("td", null, String(w.index)),
            el("td", { className: "mono" }, w.pid === null ? "–" : String(w.pid)),
            el("td", null, w.ready ? badge("ready", "ok") : badge("starting", "warn")),
            counter("worker:" + w.index, w.restarts, "restarts"),
          ),
        ),
      );
      $("workers-note").textContent = s.workers.length + " worker processes (--workers); the planes' state shown is the first worker's, counters are summed.";
    } else {
      replaceRows(workers, [emptyRow(4, "one process")]);
      $("workers-note").textContent = "The planes run in this process (--workers 1).";
    }
  }

  // -- services ------------------------------------------------------------------

  function serviceText(svc) {
    return [svc.namespace + "/" + svc.name, svc.type, ...svc.clusterIPs, ...svc.externalIPs, svc.externalName || ""];
  }

  function endpointsCell(ep) {
    const summary = el(
      "div",
      null,
      badge(ep.ready + " ready", ep.ready ? "ok" : ep.total ? "bad" : "dim", "ready endpoints"),
      " ",
      ep.serving !== ep.ready ? badge(ep.serving + " serving", "info", "serving endpoints") : null,
      " ",
      ep.terminating ? badge(ep.terminating + " terminating", "warn", "terminating endpoints") : null,
      ep.total !== ep.ready ? el("span", { className: "muted" }, " of " + ep.total) : null,
    );
    const list = ep.list.map((e) => {
      const state = e.terminating ? "terminating" : e.ready ? "ready" : e.serving ? "serving" : "not ready";
      const cls = e.terminating ? "warn" : e.ready ? "ok" : "bad";
      const where = [e.node, e.zone].filter(Boolean).join(", ");
      return el("span", { className: "ep " + cls, title: state + (where ? " · " + where : "") }, e.address + (e.ready ? "" : " (" + state + ")"));
    });
    const more = ep.total > ep.list.length ? el("span", { className: "muted" }, " +" + (ep.total - ep.list.length) + " more") : null;
    return el("td", { data: { field: "endpoints" } }, summary, el("div", null, list, more));
  }

  function renderServices(doc) {
    const part = doc.services;
    const filter = view.filters.services;
    const rows = part.rows.filter((svc) => matches(filter, serviceText(svc)));
    capNote("services", part, "services");
    const page = paginate("services", rows);
    const out = [];
    for (const svc of page) {
      const id = svc.namespace + "/" + svc.name;
      const ports = svc.ports.length ? svc.ports : [null];
      ports.forEach((p, i) => {
        const first = i === 0;
        const cells = [];
        cells.push(
          el(
            "td",
            { data: { field: "service" } },
            first ? el("strong", null, id) : null,
            first && svc.headless ? el("div", { className: "muted" }, "headless") : null,
            first && svc.externalName ? el("div", { className: "muted" }, "→ " + svc.externalName) : null,
          ),
        );
        cells.push(el("td", null, first ? svc.type : ""));
        if (!p) {
          cells.push(el("td", { className: "muted", colspan: 9 }, svc.externalName ? "ExternalName: DNS only" : "no ports"));
          out.push(el("tr", { className: "group-start", data: { service: id, port: "" } }, cells));
          return;
        }
        const portId = (p.name || String(p.port)) + "/" + p.protocol;
        const target = p.targetPort !== p.port ? " → " + p.targetPort : "";
        cells.push(
          el(
            "td",
            { className: "mono", data: { field: "port" } },
            (p.name ? p.name + " " : "") + p.port + "/" + p.protocol + target,
            p.nodePort ? el("div", { className: "muted" }, "nodePort " + p.nodePort) : null,
          ),
        );
        cells.push(
          el(
            "td",
            null,
            p.frontends.map((f) => el("span", { className: "ep", title: f.kind }, f.address)),
            p.frontendsTotal > p.frontends.length ? el("span", { className: "muted" }, " +" + (p.frontendsTotal - p.frontends.length)) : null,
            p.frontends.length ? null : el("span", { className: "muted" }, svc.headless ? "headless: DNS only" : "–"),
          ),
        );
        cells.push(endpointsCell(p.endpoints));
        cells.push(
          el(
            "td",
            { data: { field: "datapath" } },
            p.datapath ? badge(p.datapath, p.datapath === "nftables" ? "info" : "dim") : el("span", { className: "muted" }, "–"),
          ),
        );
        const c = p.counters;
        const key = "svc:" + id + ":" + portId + ":";
        if (c) {
          cells.push(counter(key + "conn", c.connections, "connections"));
          cells.push(counter(key + "active", c.active, "active"));
          cells.push(counter(key + "bytes", c.bytesIn + c.bytesOut, "bytes", fmtBytes(c.bytesIn) + " / " + fmtBytes(c.bytesOut)));
          cells.push(counter(key + "noep", c.noEndpoint, "no-endpoint"));
          cells.push(counter(key + "fail", c.connectFailures, "connect-failures"));
        } else {
          for (const field of ["connections", "active", "bytes", "no-endpoint", "connect-failures"]) {
            cells.push(el("td", { className: "num muted", data: { field: field } }, "–"));
          }
        }
        out.push(el("tr", { className: first ? "group-start" : "", data: { service: id, port: portId } }, cells));
      });
      if (svc.portsTotal > svc.ports.length) {
        out.push(el("tr", null, el("td", { className: "muted", colspan: 11 }, "+" + (svc.portsTotal - svc.ports.length) + " more ports of " + id)));
      }
    }
    replaceRows($("services-table").tBodies[0], out.length ? out : [emptyRow(11, filter ? "no service matches the filter" : "no services")]);
  }

  // -- routes --------------------------------------------------------------------

  function routeText(r) {
    return [r.kind, r.route, r.host, ...r.backends, ...r.paths.map((p) => p.path)];
  }

  function certCell(cert, tls) {
    if (!cert) return el("td", { className: "muted" }, tls ? "(listener's)" : "–");
    let cls = "ok";
    let when = "";
    if (cert.daysLeft !== null && cert.daysLeft !== undefined) {
      const days = Math.floor(cert.daysLeft);
      cls = days < 0 ? "bad" : days < 14 ? "warn" : "ok";
      when = days < 0 ? "expired " + -days + " d ago" : "in " + days + " d";
    }
    return el(
      "td",
      { data: { field: "certificate" } },
      el("div", { className: "mono" }, cert.subject),
      el("div", { className: cls }, "expires " + cert.notAfter.slice(0, 10) + (when ? " (" + when + ")" : "")),
      el("div", { className: "muted" }, cert.source),
      cert.problem ? el("div", { className: "warn" }, "Secret: " + cert.problem) : null,
    );
  }

  function classesCell(classes) {
    const entries = Object.entries(classes);
    if (!entries.length) return el("td", { className: "muted", data: { field: "classes" } }, "–");
    return el(
      "td",
      { data: { field: "classes" } },
      entries.map(([code, n]) => [badge(code + " " + fmtInt(n), code === "5xx" ? "bad" : code === "4xx" ? "warn" : code === "2xx" ? "ok" : "dim"), " "]),
    );
  }

  function renderRoutes(doc) {
    const part = doc.routes;
    const filter = view.filters.routes;
    const rows = part.rows.filter((r) => matches(filter, routeText(r)));
    capNote("routes", part, "routes");
    const page = paginate("routes", rows);
    const out = page.map((r) => {
      const key = "route:" + r.kind + ":" + r.route + ":" + r.host + ":" + r.backends.join(",") + ":";
      return el(
        "tr",
        { data: { host: r.host, route: r.route, paths: r.paths.map((p) => p.path).join(" ") } },
        el("td", { className: "mono", data: { field: "host" } }, r.host, r.tls ? el("div", null, badge("TLS", "info")) : null),
        el(
          "td",
          { className: "mono", data: { field: "paths" } },
          r.paths.length
            ? r.paths.map((p) => el("span", { className: "line", title: p.type }, p.path + " ", el("span", { className: "muted" }, p.type)))
            : el("span", { className: "muted" }, r.note || "–"),
        ),
        el(
          "td",
          { className: "mono", data: { field: "backend" } },
          r.backends.length ? r.backends.map((b) => el("span", { className: "line" }, b)) : el("span", { className: "muted" }, "–"),
          r.endpoints !== null && r.endpoints !== undefined
            ? el("div", { className: r.endpoints ? "muted" : "bad" }, r.endpoints + " endpoint" + (r.endpoints === 1 ? "" : "s"))
            : null,
        ),
        el("td", null, r.kind ? el("span", { className: "muted" }, r.kind + " ") : null, r.route || el("span", { className: "muted" }, "(none)")),
        el("td", { className: "mono" }, r.listener || "–"),
        certCell(r.certificate, r.tls),
        counter(key + "requests", r.stats.requests, "requests"),
        classesCell(r.stats.classes),
        el("td", { className: "num", data: { field: "p50" } }, fmtMs(r.stats.p50)),
        el("td", { className: "num", data: { field: "p99" } }, fmtMs(r.stats.p99)),
      );
    });
    replaceRows($("routes-table").tBodies[0], out.length ? out : [emptyRow(10, filter ? "no route matches the filter" : "no HTTP routes")]);
  }

  // -- DNS -----------------------------------------------------------------------

  function renderDns(doc) {
    const dns = doc.dns;
    $("dns-off").hidden = !!dns;
    $("dns-on").hidden = !dns;
    if (!dns) return;
    const up = dns.upstreams;
    // Failing now: the failures grew since the last refresh.
    if (view.dnsFailures !== null) view.upstreamFailing = up.failures > view.dnsFailures;
    view.dnsFailures = up.failures;
    let health = up.health;
    if (view.upstreamFailing) health = "failing now";
    const healthCls = { ok: "ok", none: "muted", degraded: "warn" }[health] || "bad";
    const ratio = dns.cache.ratio === null ? "–" : (dns.cache.ratio * 100).toFixed(1) + " %";
    $("dns-cards").replaceChildren(
      card("Listening", dns.listen, dns.zone.domain + ": " + fmtInt(dns.zone.names) + " names"),
      card("Queries", fmtInt(dns.queries)),
      card("Cache hit ratio", ratio, fmtInt(dns.cache.hits) + " hits, " + fmtInt(dns.cache.misses) + " misses"),
      card("Latency past the cache", fmtMs(dns.p50) + " / " + fmtMs(dns.p99), "p50 / p99"),
      card("Upstreams", health, fmtInt(up.forwarded) + " forwarded, " + fmtInt(up.failures) + " failed", healthCls),
    );
    const rows = (items, prefix) =>
      items.length ? items.map((t) => el("tr", null, el("td", null, t.name), counter(prefix + t.name, t.count, "count"))) : [emptyRow(2, "none yet")];
    replaceRows($("dns-types-table").tBodies[0], rows(dns.byType, "dnstype:"));
    replaceRows($("dns-rcodes-table").tBodies[0], rows(dns.byRcode, "dnsrcode:"));
    replaceRows(
      $("dns-upstreams-table").tBodies[0],
      up.addresses.length ? up.addresses.map((a) => el("tr", null, el("td", { className: "mono" }, a))) : [emptyRow(1, "no upstreams: names outside the cluster are refused")],
    );
    $("dns-upstreams-note").textContent =
      fmtInt(up.inFlight) + " in flight, " + fmtInt(up.repliesDropped) + " replies dropped (wrong id, question or source).";
  }

  // -- problems ------------------------------------------------------------------

  function renderProblems(doc) {
    const part = doc.problems;
    const filter = view.filters.problems;
    const rows = part.rows.filter((p) => matches(filter, [p.kind, p.object, p.reason, p.message, p.where]));
    capNote("problems", part, "problems");
    const page = paginate("problems", rows);
    replaceRows(
      $("problems-table").tBodies[0],
      page.length
        ? page.map((p) =>
            el(
              "tr",
              { data: { reason: p.reason } },
              el("td", null, p.kind),
              el("td", { className: "mono" }, p.object),
              el("td", null, badge(p.reason, "bad")),
              el("td", null, p.message),
              el("td", { className: "mono" }, p.where || "–"),
            ),
          )
        : [emptyRow(5, filter ? "no problem matches the filter" : "No problems: every object was accepted.")],
    );
    replaceRows(
      $("syncs-table").tBodies[0],
      part.failedSyncs.length
        ? part.failedSyncs.map((f) => el("tr", null, el("td", null, f.what), el("td", null, f.detail)))
        : [emptyRow(2, "No failed syncs.")],
    );
  }

  // -- the loop ------------------------------------------------------------------

  function render() {
    const doc = view.doc;
    if (!doc) return;
    view.seen = new Map();
    renderSummary(doc);
    renderServices(doc);
    renderRoutes(doc);
    renderDns(doc);
    renderProblems(doc);
    for (const [key, value] of view.seen) view.previous.set(key, value);
  }

  function setStatus(text, error) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("error", !!error);
  }

  function schedule(ms) {
    if (view.timer !== null) clearTimeout(view.timer);
    view.timer = setTimeout(refresh, ms);
  }

  async function refresh() {
    view.timer = null;
    if (view.inFlight) {
      view.again = true; // a filter changed meanwhile: ask again right after
      return;
    }
    view.inFlight = true;
    const started = performance.now();
    let wait = REFRESH_MS;
    try {
      const query = new URLSearchParams();
      for (const name of TABLES) if (view.filters[name]) query.set(name, view.filters[name]);
      const qs = query.toString();
      const response = await fetch("/ui/data" + (qs ? "?" + qs : ""), { cache: "no-store", headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error("HTTP " + response.status);
      view.doc = await response.json();
      render();
      view.lastOk = Date.now();
      const took = performance.now() - started;
      // A slow answer (a big cluster, a busy process) stretches the interval,
      // so that the page never keeps the server busy more than a third of the time.
      wait = Math.min(MAX_REFRESH_MS, Math.max(REFRESH_MS, Math.round(took * 3)));
      setStatus("updated " + new Date().toLocaleTimeString() + (wait > REFRESH_MS ? " · every " + (wait / 1000).toFixed(1) + " s" : ""));
    } catch (err) {
      const since = view.lastOk ? " (last update " + new Date(view.lastOk).toLocaleTimeString() + ")" : "";
      setStatus("cannot reach netplane: " + err.message + since + "; retrying", true);
    } finally {
      view.inFlight = false;
      schedule(view.again ? 0 : wait);
      view.again = false;
    }
  }

  function start() {
    for (const name of TABLES) {
      const input = $(name + "-filter");
      let debounce = null;
      input.addEventListener("input", () => {
        view.filters[name] = normalFilter(input.value);
        view.pages[name] = 0;
        render();
        if (debounce !== null) clearTimeout(debounce);
        debounce = setTimeout(() => schedule(0), 300);
      });
    }
    refresh();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
