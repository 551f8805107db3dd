// Granary dashboard: builds every page from the JSON under /api/v1/. Data only ever reaches the
// page through textContent and attributes set on elements made here (never parsed as markup), and links are
// built from fixed paths with encoded parameters.
"use strict";

(() => {
  const app = document.getElementById("app");
  const statusLine = document.getElementById("status");
  const POLL_MS = 2000;

  // ---- DOM and formatting helpers --------------------------------------------------------

  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function link(path, params, text, attrs) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
    }
    return h("a", { href: url.pathname + url.search, ...(attrs || {}) }, text);
  }

  const casLink = (instance, digest, text, extra) =>
    digest ? link("/ui/cas", { instance, digest, ...(extra || {}) }, text || digest, { class: "mono" }) : "–";
  const downloadLink = (instance, digest, name, text) =>
    link("/api/v1/download", { instance, digest, name }, text || "download", { class: "download", download: "" });
  const opLink = (name, text) => link("/ui/operation", { name }, text || name, { class: "mono" });
  const buildLink = (id, text) => link("/ui/build", { id }, text || id, { class: "mono" });
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function short(digest) {
    if (!digest) return "–";
    const [hash, size] = digest.split("/");
    return `${hash.slice(0, 12)}…/${size}`;
  }

  function num(n, digits) {
    if (n === null || n === undefined || Number.isNaN(n)) return "–";
    if (Math.abs(n) >= 1e9) return (n / 1e9).toFixed(2) + " G";
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(2) + " M";
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + " k";
    return n.toFixed(digits === undefined ? (Number.isInteger(n) ? 0 : 2) : digits);
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }

  const pct = (r) => (r === null || r === undefined ? "–" : (100 * r).toFixed(1) + " %");

  function when(t) {
    if (!t) return "–";
    const d = new Date(t * 1000);
    const pad = (x, n) => String(x).padStart(n || 2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function dur(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return (s * 1000).toFixed(1) + " ms";
    if (s < 120) return s.toFixed(2) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  const ago = (t) => (t ? dur(Math.max(0, Date.now() / 1000 - t)) + " ago" : "–");

  function badge(stage) {
    return h("span", { class: "badge stage-" + String(stage).toLowerCase() }, stage);
  }

  function resultBadge(result, detail) {
    return h("span", { class: "badge result-" + String(result).toLowerCase() }, detail ? `${result} (${detail})` : result);
  }

  function setStatus(text, bad) {
    statusLine.textContent = text;
    statusLine.className = bad ? "bad" : "";
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, params) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
    }
    const r = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) throw new ApiError(r.status, (body && body.error) || `${r.status} ${r.statusText}`);
    return body;
  }

  function errorBox(e) {
    const status = e.status ? `HTTP ${e.status}: ` : "";
    return h("div", { class: "error", id: "error", role: "alert" }, status + e.message);
  }

  // headers ending in "#" head a column of numbers (right-aligned, like its cells)
  function table(headers, rows, attrs) {
    return h("table", attrs || {},
      h("thead", {}, h("tr", {}, headers.map((x) =>
        x.endsWith("#") ? h("th", { class: "num" }, x.slice(0, -1)) : h("th", {}, x)))),
      h("tbody", {}, rows));
  }

  function section(title, ...content) {
    return h("section", { class: "panel" }, h("h2", {}, title), ...content);
  }

  function kv(pairs) {
    return h("dl", { class: "kv" }, pairs.flatMap(([k, v, id]) => [h("dt", {}, k), h("dd", id ? { id } : {}, v)]));
  }

  const params = new URLSearchParams(location.search);
  let instancesCache = null;

  async function instances() {
    if (!instancesCache) instancesCache = await api("/api/v1/instances");
    return instancesCache;
  }

  function instanceInput(value, id) {
    const listId = id + "-list";
    const input = h("input", { id, name: "instance", list: listId, value: value || "", placeholder: "(default instance)",
      autocomplete: "off", spellcheck: "false" });
    const list = h("datalist", { id: listId });
    instances().then((data) => {
      for (const i of data.instances) list.append(h("option", { value: i.name }, i.name === "" ? "(default)" : i.name));
    }).catch(() => {});
    return [input, list];
  }

  // ---- overview -----------------------------------------------------------------------------

  function overviewPage() {
    const cards = {};
    const card = (key, title, sub) => {
      const value = h("div", { class: "value", id: "ov-" + key }, "–");
      const note = h("div", { class: "sub", id: "ov-" + key + "-sub" }, sub || "");
      cards[key] = { value, note };
      return h("div", { class: "card" }, h("div", { class: "title" }, title), value, note);
    };
    const spark = h("canvas", { id: "ov-spark", width: 600, height: 80, "aria-label": "requests per second" });
    const methods = h("tbody", { id: "ov-methods" });
    app.replaceChildren(
      h("h1", {}, "Overview"),
      h("div", { class: "cards" },
        card("requests", "Requests / s"), card("errors", "Errors / s"), card("hit", "Action Cache hit ratio"),
        card("in", "Bytes in / s"), card("out", "Bytes out / s"), card("queued", "Queue depth"),
        card("executing", "Jobs executing"), card("completed", "Jobs completed / s"),
        card("workers", "Workers connected"), card("slots", "Worker slots busy"),
        card("blobs", "Stored blobs"), card("bytes", "Stored bytes")),
      section("Requests per second", spark),
      section("Calls by method", h("table", { id: "ov-methods-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Method"), h("th", { class: "num" }, "Calls"))), methods)));
    const history = [];
    const set = (key, value, sub) => {
      cards[key].value.textContent = value;
      if (sub !== undefined) cards[key].note.textContent = sub;
    };
    async function tick() {
      try {
        const o = await api("/api/v1/overview");
        const r = o.rates;
        set("requests", r ? num(r.requests) : "–", `${num(o.requests)} in all`);
        set("errors", r ? num(r.errors) : "–", `${num(o.errors)} in all`);
        set("hit", r && r.hit_ratio !== null ? pct(r.hit_ratio) : pct(o.hit_ratio),
          `${num(o.hits)} hits, ${num(o.misses)} misses in all`);
        set("in", r ? bytes(r.bytes_in) + "/s" : "–", `${bytes(o.bytes_in)} in all`);
        set("out", r ? bytes(r.bytes_out) + "/s" : "–", `${bytes(o.bytes_out)} in all`);
        set("queued", num(o.queued), o.execution ? "jobs waiting for a worker" : "execution is off");
        set("executing", num(o.executing), `${num(o.uploads)} uploads in progress`);
        set("completed", r ? num(r.completed) : "–", `${num(o.completed)} in all`);
        set("workers", num(o.workers), `${num(o.workers_busy)} busy`);
        set("slots", `${num(o.slots_busy)} / ${num(o.slots)}`, "held / offered");
        set("blobs", num(o.stored_blobs), "in disk and memory stores");
        set("bytes", bytes(o.stored_bytes), "in disk and memory stores");
        history.push(r ? r.requests : 0);
        if (history.length > 90) history.shift();
        drawSpark(spark, history);
        const rows = Object.entries(o.by_method).sort((a, b) => b[1] - a[1]);
        methods.replaceChildren(...rows.map(([m, n]) =>
          h("tr", {}, h("td", { class: "mono" }, m), h("td", { class: "num" }, num(n)))));
        setStatus("updated " + new Date().toLocaleTimeString());
      } catch (e) {
        setStatus(e.message, true);
      }
      setTimeout(tick, POLL_MS);
    }
    tick();
  }

  function drawSpark(canvas, values) {
    const ctx = canvas.getContext("2d");
    const w = canvas.width = canvas.clientWidth || 600;
    const ht = canvas.height;
    ctx.clearRect(0, 0, w, ht);
    const max = Math.max(1, ...values);
    ctx.strokeStyle = "#2f6fdb";
    ctx.fillStyle = "rgba(47,111,219,0.12)";
    ctx.lineWidth = 2;
    ctx.beginPath();
    const step = w / Math.max(1, 89);
    values.forEach((v, i) => {
      const x = w - (values.length - 1 - i) * step;
      const y = ht - 4 - (v / max) * (ht - 12);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.lineTo(w, ht);
    ctx.lineTo(w - (values.length - 1) * step, ht);
    ctx.closePath();
    ctx.fill();
    ctx.fillStyle = "#667";
    ctx.font = "11px sans-serif";
    ctx.fillText(`max ${num(max)}/s`, 4, 12);
  }

  // ---- operations ---------------------------------------------------------------------------

  const DEFAULT_FILTER = "sort_order = queued_time(desc)";

  function operationsPage() {
    const state = {
      instance: params.get("instance") || "",
      filter: params.has("filter") ? params.get("filter") : DEFAULT_FILTER,
      page_size: params.get("page_size") || "50",
      token: params.get("page_token") || "",
      back: [],
    };
    const [instance, list] = instanceInput(state.instance, "ops-instance");
    const filter = h("input", { id: "ops-filter", name: "filter", value: state.filter, size: 70, spellcheck: "false",
      maxlength: 2000 });
    const size = h("select", { id: "ops-size", name: "page_size" },
      ["20", "50", "100", "200"].map((n) => h("option", { value: n, selected: n === state.page_size }, n)));
    const out = h("div", { id: "ops-out" });
    const prev = h("button", { id: "ops-prev", type: "button", disabled: true }, "← Previous");
    const next = h("button", { id: "ops-next", type: "button", disabled: true }, "Next →");
    const pageNo = h("span", { id: "ops-page", class: "muted" });
    const form = h("form", { class: "toolbar", id: "ops-form" },
      h("label", {}, "Instance ", instance, list),
      h("label", { class: "grow" }, "Filter ", filter),
      h("label", {}, "Per page ", size),
      h("button", { type: "submit", id: "ops-apply" }, "Apply"));
    app.replaceChildren(
      h("h1", {}, "Operations"), form,
      h("p", { class: "help" },
        "Filter as ListOperations: FIELD OP VALUE joined by &, e.g. ",
        h("code", {}, "stage = COMPLETED & tool_name = bazel & sort_order = completed_time(desc)"),
        ". Fields: name, stage, queued_time, start_time, completed_time, tool_name, tool_version, invocation_id," +
        " correlated_invocations_id, identity. An empty filter lists unfinished operations, oldest first."),
      out, h("div", { class: "pager" }, prev, pageNo, next));

    async function load() {
      const q = { instance: state.instance, filter: state.filter, page_size: state.page_size, page_token: state.token };
      const url = new URL(location.href);
      url.search = "";
      for (const [k, v] of Object.entries(q)) if (v !== "" || k === "filter") url.searchParams.set(k, v);
      history.replaceState(null, "", url.pathname + url.search);
      out.replaceChildren(h("p", { class: "muted" }, "loading…"));
      prev.disabled = next.disabled = true;
      try {
        const data = await api("/api/v1/operations", q);
        const rows = data.operations.map((o) => h("tr", {},
          h("td", {}, badge(o.stage)),
          h("td", {}, opLink(o.name, o.name.split("/").pop().slice(0, 8) + "…"), o.instance ? h("div", { class: "muted" }, o.instance) : null),
          h("td", {}, casLink(o.instance, o.action_digest, short(o.action_digest), { view: "text" })),
          h("td", {}, o.tool_name ? `${o.tool_name} ${o.tool_version}` : "–",
            o.invocation_id ? h("div", { class: "muted mono" }, data.invocations[o.invocation_id]
              ? buildLink(o.invocation_id, o.invocation_id) : o.invocation_id) : null,
            o.action_mnemonic ? h("div", { class: "muted" }, o.action_mnemonic) : null),
          h("td", { class: "mono" }, o.worker || "–"),
          h("td", { class: "num" }, o.exit_code === null ? (o.status && o.status.code !== "OK" ? o.status.code : "–") : o.exit_code,
            o.cached_result ? h("div", { class: "muted" }, "cached") : null),
          h("td", {}, when(o.queued_time)),
          h("td", { class: "num" }, o.completed_time && o.queued_time ? dur(o.completed_time - o.queued_time) :
            o.start_time ? "running " + dur(Date.now() / 1000 - o.start_time) : "–")));
        out.replaceChildren(rows.length
          ? table(["Stage", "Operation", "Action", "Tool / invocation", "Worker", "Exit#", "Queued", "Took#"], rows,
            { id: "ops-table" })
          : h("p", { class: "muted", id: "ops-empty" }, "No operations match."));
        // listing one invocation's operations: say which build they belong to
        const m = /(?:^|&)\s*invocation_id\s*=\s*(["']?)([^&"']+)\1\s*(?:&|$)/.exec(state.filter);
        const build = m && data.invocations[m[2].trim()];
        if (build) {
          out.prepend(h("p", { class: "banner", id: "ops-build" }, "Operations of build ",
            buildLink(build.invocation_id), ` (${[build.command, ...build.patterns].join(" ")}, `, resultBadge(build.result), ")"));
        }
        state.nextToken = data.next_page_token;
        next.disabled = !data.next_page_token;
        prev.disabled = state.back.length === 0;
        pageNo.textContent = `page ${state.back.length + 1}` + (state.token && state.back.length === 0 ? " (from a link)" : "");
        setStatus(`${rows.length} operation(s)`);
      } catch (e) {
        out.replaceChildren(errorBox(e));
        prev.disabled = state.back.length === 0;
        setStatus("error", true);
      }
    }

    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      state.instance = instance.value;
      state.filter = filter.value;
      state.page_size = size.value;
      state.token = "";
      state.back = [];
      load();
    });
    pageTokens(state, next, prev, load);
    load();
  }

  // ---- one operation ------------------------------------------------------------------------

  function operationPage() {
    const name = params.get("name") || "";
    app.replaceChildren(h("h1", {}, "Operation"), h("p", { class: "mono", id: "op-name" }, name));
    const body = h("div", { id: "op-body" }, h("p", { class: "muted" }, "loading…"));
    app.append(body);
    if (!name) {
      body.replaceChildren(errorBox(new Error("no operation named: open one from the operations list")));
      return;
    }
    // the live output section stays in place while the rest is redrawn (its text and scroll position too)
    const head = h("div", {});
    const rest = h("div", {});
    const live = { stdout: livePane("stdout"), stderr: livePane("stderr") };
    const liveNote = h("p", { class: "muted", id: "op-live-note" });
    const liveSection = section("Live output", liveNote, live.stdout.el, live.stderr.el);
    liveSection.id = "op-live";
    liveSection.hidden = true;
    async function load() {
      let d;
      try {
        d = await api("/api/v1/operation", { name });
      } catch (e) {
        body.replaceChildren(errorBox(e));
        setStatus("error", true);
        return;
      }
      const nodes = renderOperation(d);
      const split = d.notes && d.notes.length ? 2 : 1;  // the summary (and notes) above the live output
      head.replaceChildren(...nodes.slice(0, split));
      rest.replaceChildren(...nodes.slice(split));
      if (body.firstChild !== head) body.replaceChildren(head, liveSection, rest);
      const done = d.operation.stage === "COMPLETED";
      const streams = d.streams || {};
      if (done) {
        stopFollowing(live.stdout);
        stopFollowing(live.stderr);
        liveSection.hidden = true;  // the result's stdout and stderr are shown below instead
      } else if (streams.stdout || streams.stderr) {
        liveSection.hidden = false;
        liveNote.textContent = "What the action prints, as it prints it (the page keeps the last 256 K characters of each).";
        for (const which of ["stdout", "stderr"]) {
          if (streams[which] && live[which].name !== streams[which]) follow(live[which], streams[which]);
        }
      } else if (d.operation.stage === "EXECUTING") {
        liveSection.hidden = false;
        liveNote.textContent = "This action's output is not streamed (execution.logstream is off, or its worker" +
          " cannot stream); it shows here when the action completes.";
      }
      setStatus(done ? "finished" : "updating every 2 s");
      if (!done) setTimeout(load, POLL_MS);
    }
    load();
  }

  // ---- live output of a running action ----------------------------------------------------

  const LIVE_KEEP = 256 * 1024;  // characters of one stream the page keeps; older output is dropped

  function livePane(which) {
    const pre = h("pre", { class: "output live", id: "op-live-" + which });
    const info = h("p", { class: "muted small", id: "op-live-" + which + "-info" }, "no output yet");
    const el = h("div", { class: "live-pane" }, h("h3", {}, which), pre, info);
    return { which, pre, info, el, name: null, offset: 0, run: 0, dropped: false };
  }

  function stopFollowing(pane) {
    pane.run++;  // the loop of the current run sees it and ends
  }

  // reads the stream from where the page is up to, the server waiting up to 10 s for more each time
  async function follow(pane, name) {
    const run = ++pane.run;
    Object.assign(pane, { name, offset: 0, dropped: false });
    pane.pre.textContent = "";
    pane.info.textContent = "waiting for output…";
    while (run === pane.run) {
      let r;
      try {
        r = await api("/api/v1/logstream", { name, offset: String(pane.offset), wait: "10" });
      } catch (e) {
        if (run !== pane.run) return;
        pane.info.textContent = (e.status ? `HTTP ${e.status}: ` : "") + e.message;
        if ([400, 401, 403, 404].includes(e.status)) return;  // asking again will not help
        await sleep(POLL_MS);
        continue;
      }
      if (run !== pane.run) return;
      if (r.text) appendLive(pane, r.text);
      pane.offset = r.next_offset;
      pane.info.textContent = `${bytes(r.next_offset)} so far` + (pane.dropped ? " (the start is no longer shown)" : "") +
        (r.finished ? "; the stream is finished" : "; following");
      if (r.finished) return;
    }
  }

  function appendLive(pane, text) {
    const pre = pane.pre;
    const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 30;
    pre.append(text);  // a text node: never parsed as markup
    if (pre.textContent.length > LIVE_KEEP) {
      const all = pre.textContent;
      let cut = all.length - LIVE_KEEP * 3 / 4;
      const nl = all.indexOf("\n", cut);
      if (nl >= 0 && nl - cut < 4096) cut = nl + 1;
      pre.textContent = all.slice(cut);
      pane.dropped = true;
    }
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }

  function renderOperation(d) {
    const o = d.operation;
    const inst = o.instance;
    const out = [];
    const status = d.status ? `${d.status.code}${d.status.message ? ": " + d.status.message : ""}` : "–";
    out.push(section("Summary", kv([
      ["Stage", badge(o.stage), "op-stage"],
      ["Instance", inst === "" ? "(default)" : inst],
      ["Status", status, "op-status"],
      ["Exit code", o.exit_code === null ? "–" : String(o.exit_code), "op-exit"],
      ["Cached result", o.cached_result ? "yes" : "no"],
      ["Worker", o.worker || "–", "op-worker"],
      ["Requested by", o.identity || "–"],
      ["Tool", o.tool_name ? `${o.tool_name} ${o.tool_version}` : "–"],
      ["Invocation", d.invocation
        ? h("span", {}, buildLink(d.invocation.invocation_id), " ", resultBadge(d.invocation.result), " ",
          h("span", { class: "muted" }, [d.invocation.command, ...d.invocation.patterns].join(" ")))
        : o.invocation_id || "–", "op-invocation"],
      ["Mnemonic / target", [o.action_mnemonic, o.target_id].filter(Boolean).join(" ") || "–"],
      ["Priority / retries", `${d.job.priority} / ${d.job.retries}`],
    ])));
    if (d.notes && d.notes.length) out.push(h("ul", { class: "notes" }, d.notes.map((n) => h("li", {}, n))));
    const a = d.action;
    out.push(section("Action", a ? kv([
      ["Digest", casLink(inst, a.digest, a.digest, { view: "text" })],
      ["Command", casLink(inst, a.command_digest, a.command_digest, { view: "text" })],
      ["Input root", casLink(inst, a.input_root_digest, a.input_root_digest, { view: "directory" }), "op-input-root"],
      ["Timeout", a.timeout === null ? "–" : dur(a.timeout)],
      ["Do not cache", a.do_not_cache ? "yes" : "no"],
      ["Platform", props(a.platform.length ? a.platform : d.job.platform)],
    ]) : h("p", { class: "muted" }, "The action is not available.")));
    const c = d.command;
    if (c) {
      out.push(section("Command",
        h("pre", { class: "argv", id: "op-argv" }, c.arguments.map(shellQuote).join(" ")),
        c.working_directory ? kv([["Working directory", c.working_directory]]) : null,
        h("h3", {}, "Environment"),
        c.environment_variables.length
          ? table(["Name", "Value"], c.environment_variables.map((e) =>
            h("tr", {}, h("td", { class: "mono" }, e.name), h("td", { class: "mono wrap" }, e.value))), { id: "op-env" })
          : h("p", { class: "muted" }, "none"),
        h("h3", {}, "Output paths"),
        h("ul", { class: "mono" }, [...c.output_paths, ...c.output_files, ...c.output_directories].map((p) => h("li", {}, p)))));
    }
    out.push(section("Timeline", timeline(o, d.result)));
    const r = d.result;
    if (r) {
      const files = r.output_files.map((f) => h("tr", {},
        h("td", { class: "mono" }, f.path),
        h("td", { class: "num" }, f.digest ? bytes(Number(f.digest.split("/")[1])) : "–"),
        h("td", {}, f.is_executable ? "yes" : ""),
        h("td", {}, casLink(inst, f.digest, short(f.digest), { view: "text" })),
        h("td", {}, f.digest ? downloadLink(inst, f.digest, f.path) : "")));
      const dirs = r.output_directories.map((x) => h("tr", {},
        h("td", { class: "mono" }, x.path),
        h("td", {}, casLink(inst, x.tree_digest, short(x.tree_digest), { view: "tree" })),
        h("td", {}, x.root_directory_digest ? casLink(inst, x.root_directory_digest, short(x.root_directory_digest), { view: "directory" }) : "–")));
      out.push(section("Outputs",
        files.length ? table(["File", "Size#", "Executable", "Digest", ""], files, { id: "op-files" }) : h("p", { class: "muted" }, "No output files."),
        dirs.length ? table(["Directory", "Tree", "Root directory"], dirs, { id: "op-dirs" }) : null,
        r.output_symlinks.length ? table(["Symlink", "Target"], r.output_symlinks.map((s) =>
          h("tr", {}, h("td", { class: "mono" }, s.path), h("td", { class: "mono" }, s.target)))) : null));
      out.push(section("stdout", stream(inst, r.stdout, "stdout")));
      out.push(section("stderr", stream(inst, r.stderr, "stderr")));
    }
    return out;
  }

  function props(list) {
    if (!list || !list.length) return "–";
    return h("span", {}, list.map((p) => h("span", { class: "chip" }, `${p.name}=${p.value}`)));
  }

  function shellQuote(s) {
    return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'";
  }

  function stream(inst, s, which) {
    if (!s) return h("p", { class: "muted", id: "op-" + which }, "empty");
    const parts = [];
    if (s.text !== null && s.text !== undefined) {
      parts.push(h("pre", { class: "output", id: "op-" + which }, s.text));
    } else if (s.missing) {
      parts.push(h("p", { class: "error", id: "op-" + which }, `${s.digest} is not in the CAS any more`));
    } else {
      parts.push(h("p", { class: "muted", id: "op-" + which }, s.error || "not shown (needs cache-read)"));
    }
    const info = [`${bytes(s.size)}`];
    if (s.truncated) info.push("shown in part");
    parts.push(h("p", { class: "muted" }, info.join(", "), " ",
      s.digest && !s.inline ? downloadLink(inst, s.digest, which + ".txt", "download the whole " + which) : null));
    return parts;
  }

  function timeline(o, r) {
    const t = r ? r.execution_metadata.timestamps : {};
    const rows = [
      ["Queued", t.queued || o.queued_time],
      ["Worker started", t.worker_start || o.start_time],
      ["Input fetch started", t.input_fetch_start],
      ["Input fetch completed", t.input_fetch_completed],
      ["Execution started", t.execution_start],
      ["Execution completed", t.execution_completed],
      ["Output upload started", t.output_upload_start],
      ["Output upload completed", t.output_upload_completed],
      ["Worker completed", t.worker_completed],
      ["Operation completed", o.completed_time],
    ];
    const base = rows[0][1];
    let last = base;
    return table(["Stage", "Time", "Since queued#", "Step#"], rows.map(([label, at]) => {
      const step = at && last ? dur(at - last) : "–";
      if (at) last = at;
      return h("tr", {}, h("td", {}, label), h("td", { class: "mono" }, when(at)),
        h("td", { class: "num" }, at && base ? dur(at - base) : "–"), h("td", { class: "num" }, step));
    }), { id: "op-timeline" });
  }

  // ---- builds (the Build Event Service's invocations) -------------------------------------------

  function buildsPage() {
    const state = {
      build_id: params.get("build_id") || "",
      page_size: params.get("page_size") || "50",
      token: params.get("page_token") || "",
      back: [],
    };
    const buildId = h("input", { id: "builds-build-id", name: "build_id", value: state.build_id, size: 40,
      placeholder: "(all builds)", spellcheck: "false", maxlength: 1000 });
    const size = h("select", { id: "builds-size", name: "page_size" },
      ["20", "50", "100", "200"].map((n) => h("option", { value: n, selected: n === state.page_size }, n)));
    const out = h("div", { id: "builds-out" });
    const prev = h("button", { id: "builds-prev", type: "button", disabled: true }, "← Newer");
    const next = h("button", { id: "builds-next", type: "button", disabled: true }, "Older →");
    const pageNo = h("span", { id: "builds-page", class: "muted" });
    const form = h("form", { class: "toolbar", id: "builds-form" },
      h("label", {}, "Build id ", buildId),
      h("label", {}, "Per page ", size),
      h("button", { type: "submit", id: "builds-apply" }, "Apply"));
    const help = h("p", { class: "help" }, "Bazel invocations whose build events were sent here (",
      h("code", {}, "--bes_backend=grpc://HOST:PORT"), "), most recent first. The build id is Bazel's",
      " --build_request_id, shared by the invocations of one build request.");
    const pager = h("div", { class: "pager" }, prev, pageNo, next);
    app.replaceChildren(h("h1", {}, "Builds"), form, help, out, pager);

    async function load() {
      const q = { build_id: state.build_id, page_size: state.page_size, page_token: state.token };
      const url = new URL(location.href);
      url.search = "";
      for (const [k, v] of Object.entries(q)) if (v !== "") url.searchParams.set(k, v);
      history.replaceState(null, "", url.pathname + url.search);
      out.replaceChildren(h("p", { class: "muted" }, "loading…"));
      prev.disabled = next.disabled = true;
      try {
        const data = await api("/api/v1/builds", q);
        if (!data.enabled) {
          form.hidden = help.hidden = pager.hidden = true;
          out.replaceChildren(h("p", { class: "panel muted", id: "builds-off" }, "Build events are off on this server" +
            " (build_events.enabled: false): no builds are stored, so there are none to show."));
          setStatus("");
          return;
        }
        const rows = data.invocations.map((b) => h("tr", {},
          h("td", {}, buildLink(b.invocation_id), b.build_id && b.build_id !== b.invocation_id
            ? h("div", { class: "muted mono small" }, "build " + b.build_id) : null),
          h("td", {}, b.command || "–"),
          h("td", { class: "mono" }, b.patterns.length
            ? b.patterns.flatMap((p) => [h("span", { class: "nowrap" }, p), " "]) : "–"),
          h("td", {}, b.user || "–", b.host ? h("div", { class: "muted" }, b.host) : null),
          h("td", { class: "nowrap" }, when(b.start_time)),
          h("td", { class: "num" }, b.duration !== null ? dur(b.duration) : "–"),
          h("td", {}, resultBadge(b.result, b.exit_code ? b.exit_code_name || String(b.exit_code) : ""),
            b.first_failure ? h("div", { class: "muted small failure" }, firstLine(b.first_failure)) : null),
          h("td", { class: "num" }, `${num(b.actions_executed)} / ${num(b.actions_created)}`),
          h("td", { class: "num" }, b.cache_hits === null ? "–" : `${num(b.cache_hits)} / ${num(b.processes)}`),
          h("td", {}, b.operations_filter ? link("/ui/operations", { filter: b.operations_filter }, "operations") : "–")));
        out.replaceChildren(rows.length
          ? table(["Invocation", "Command", "Patterns", "User", "Started", "Duration#", "Result", "Actions run / created#",
            "Cache hits#", ""], rows, { id: "builds-table" })
          : h("p", { class: "muted", id: "builds-empty" }, state.build_id ? "No builds with this build id." :
            "No builds are stored yet: run Bazel with --bes_backend pointing at this server."));
        state.nextToken = data.next_page_token;
        next.disabled = !data.next_page_token;
        prev.disabled = state.back.length === 0;
        pageNo.textContent = `page ${state.back.length + 1}`;
        setStatus(`${rows.length} build(s)`);
      } catch (e) {
        out.replaceChildren(errorBox(e));
        prev.disabled = state.back.length === 0;
        setStatus("error", true);
      }
    }

    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      state.build_id = buildId.value.trim();
      state.page_size = size.value;
      state.token = "";
      state.back = [];
      load();
    });
    pageTokens(state, next, prev, load);
    load();
  }

  // Next/previous buttons over page tokens: the tokens of the pages before are kept to go back.
  function pageTokens(state, next, prev, load) {
    next.addEventListener("click", () => {
      if (!state.nextToken) return;
      state.back.push(state.token);
      state.token = state.nextToken;
      load();
    });
    prev.addEventListener("click", () => {
      if (!state.back.length) return;
      state.token = state.back.pop();
      load();
    });
  }

  function firstLine(text) {
    const lines = String(text).split("\n").filter((l) => l.trim());
    return lines.length ? lines[0] + (lines.length > 1 ? " …" : "") : "";
  }

  function buildPage() {
    const id = params.get("id") || "";
    app.replaceChildren(h("h1", {}, "Build"), h("p", { class: "mono", id: "build-id" }, id));
    const body = h("div", { id: "build-body" }, h("p", { class: "muted" }, "loading…"));
    app.append(body);
    if (!id) {
      body.replaceChildren(errorBox(new Error("no invocation named: open one from the builds list")));
      return;
    }
    async function load() {
      let d;
      try {
        d = await api("/api/v1/build", { id });
      } catch (e) {
        body.replaceChildren(errorBox(e));
        setStatus("error", true);
        return;
      }
      body.replaceChildren(...renderBuild(d));
      const running = d.summary.result === "running";
      setStatus(running ? "running: updating every 4 s" : "finished");
      if (running) setTimeout(load, POLL_MS * 2);
    }
    load();
  }

  function renderBuild(d) {
    const s = d.summary;
    const out = [];
    out.push(section("Summary", kv([
      ["Result", h("span", {}, resultBadge(s.result), s.exit_code !== null
        ? h("span", { class: "muted" }, ` exit code ${s.exit_code}${s.exit_code_name ? " " + s.exit_code_name : ""}`) : null),
      "build-result"],
      ["Command", h("span", { class: "mono" }, [s.command, ...s.patterns].join(" ") || "–"), "build-command"],
      ["User", s.user ? s.user + (s.host ? "@" + s.host : "") : "–"],
      ["Tool", s.tool_version ? "Bazel " + s.tool_version : "–"],
      ["Started", when(s.start_time)],
      ["Duration", s.duration !== null ? dur(s.duration) : "–"],
      ["Build id", link("/ui/builds", { build_id: s.build_id }, s.build_id, { class: "mono" })],
      ["Actions", `${num(s.actions_executed)} executed of ${num(s.actions_created)} created`, "build-actions"],
      ["Cache hits", s.cache_hits === null ? "–" : `${num(s.cache_hits)} of ${num(s.processes)} processes`],
      ["Targets", `${s.targets_configured} configured, ${s.targets_completed} completed, ${s.targets_failed} failed`],
      ["Tests", `${s.tests_passed} passed, ${s.tests_failed} failed`],
      ["Events", `${num(s.events)}` + (s.stream_finished ? ", stream finished" : ", stream still open") +
        (d.truncated ? " (more than were decoded)" : "")],
    ])));
    out.push(section("Operations", buildOperations(d.operations, s)));
    if (d.failures.length) {
      out.push(section(`Failures (${d.counts.failures})`, table(["Kind", "Label", "What", "Message"], d.failures.map((f) =>
        h("tr", {}, h("td", {}, f.kind), h("td", { class: "mono" }, f.label || "(build)"),
          h("td", {}, f.what + (f.kind === "action" ? ` exited ${f.exit_code}` : "")),
          h("td", {}, h("pre", { class: "message" }, f.message || "–")))), { id: "build-failures" }),
      shownOf(d.failures.length, d.counts.failures)));
    }
    const targets = [...d.targets].sort((a, b) => (a.success - b.success) || a.label.localeCompare(b.label));
    out.push(section(`Targets (${d.counts.targets})`, targets.length ? table(["Label", "Kind", "Outcome"], targets.map((t) =>
      h("tr", {}, h("td", { class: "mono" }, t.label), h("td", {}, t.kind || "–"),
        h("td", {}, t.success ? h("span", { class: "badge ok" }, "built") : h("span", { class: "badge stale" }, "failed"),
          t.failure ? h("div", { class: "muted small" }, firstLine(t.failure)) : null))), { id: "build-targets" })
      : h("p", { class: "muted" }, "No target completed (yet)."), shownOf(targets.length, d.counts.targets)));
    if (d.tests.length) {
      out.push(section(`Tests (${d.counts.tests})`, table(["Label", "Status", "Runs#", "Duration#", "Cached"], d.tests.map((t) =>
        h("tr", {}, h("td", { class: "mono" }, t.label),
          h("td", {}, h("span", { class: "badge " + (["PASSED", "FLAKY"].includes(t.status) ? "ok" : "stale") }, t.status)),
          h("td", { class: "num" }, t.runs), h("td", { class: "num" }, dur(t.duration)), h("td", {}, t.cached ? "yes" : ""))),
      { id: "build-tests" }), shownOf(d.tests.length, d.counts.tests)));
    }
    return out;
  }

  function shownOf(shown, total) {
    return shown < total ? h("p", { class: "muted" }, `The first ${shown} of ${total} are listed.`) : null;
  }

  function buildOperations(ops, s) {
    const all = s.operations_filter ? link("/ui/operations", { filter: s.operations_filter }, "operations list", { id: "build-ops-link" }) : null;
    if (!ops.listed) return h("p", { class: "muted", id: "build-ops" }, ops.why);
    const rows = ops.instances.map((i) => h("li", {},
      link("/ui/operations", { instance: i.instance, filter: ops.filter },
        `${i.count}${i.more ? "+" : ""} operation${i.count === 1 && !i.more ? "" : "s"}`),
      " on instance ", h("span", { class: "mono" }, i.instance === "" ? "(default)" : i.instance)));
    return h("div", { id: "build-ops" },
      rows.length ? h("ul", { class: "plain" }, rows)
        : h("p", { class: "muted" }, "No operation on this server carries this invocation id (its actions ran" +
          " locally, were cache hits, or their operations were deleted)."),
      h("p", { class: "muted small" }, "Bazel sends its invocation id with every remote call (RequestMetadata" +
        " tool_invocation_id); the ", all, " filters by it",
        ops.other_instances ? "; other instances are asked by name there." : "."));
  }

  // ---- workers ------------------------------------------------------------------------------

  function workersPage() {
    const out = h("div", { id: "workers-out" }, h("p", { class: "muted" }, "loading…"));
    app.replaceChildren(h("h1", {}, "Workers"), out);
    async function load() {
      try {
        const d = await api("/api/v1/workers");
        if (!d.execution) {
          out.replaceChildren(h("p", { class: "muted" }, "Execution is off on this server."));
          return;
        }
        const rows = d.sessions.map((s) => h("tr", { class: s.alive ? "" : "stale" },
          h("td", {}, h("div", { class: "mono" }, s.bot_id), h("div", { class: "muted mono small" }, s.name)),
          h("td", {}, s.instance === "" ? "(default)" : s.instance, h("div", { class: "muted" }, "queue " + s.queue)),
          h("td", {}, props(s.properties)),
          h("td", { class: "num" }, `${s.busy_slots} / ${s.slots}`),
          h("td", { class: "nowrap" }, s.alive ? h("span", { class: "badge ok" }, "connected") : h("span", { class: "badge stale" }, "silent"),
            h("div", { class: "muted" }, "seen " + ago(s.last_seen))),
          h("td", {}, s.jobs.length ? h("ul", { class: "jobs" }, s.jobs.map((j) => h("li", {},
            badge(j.stage), " ", casLink(j.instance, j.action_digest, short(j.action_digest), { view: "text" }),
            j.start_time ? h("span", { class: "muted" }, " for " + dur(Date.now() / 1000 - j.start_time)) : null,
            j.operations.map((op) => h("div", {}, opLink(op.name, "operation " + op.name.split("/").pop().slice(0, 8) + "…"),
              op.tool_name ? h("span", { class: "muted" }, " " + op.tool_name) : null))))) : h("span", { class: "muted" }, "idle"))));
        out.replaceChildren(rows.length
          ? table(["Worker", "Instance", "Platform", "Slots busy#", "State", "Current jobs"], rows, { id: "workers-table" })
          : h("p", { class: "muted", id: "workers-empty" }, "No worker sessions."));
        if (d.more) out.append(h("p", { class: "muted" }, "Only the 1000 most recently seen sessions are listed."));
        setStatus(`${d.sessions.length} session(s), updated ${new Date().toLocaleTimeString()}`);
      } catch (e) {
        out.replaceChildren(errorBox(e));
        setStatus("error", true);
      }
      setTimeout(load, POLL_MS * 2);
    }
    load();
  }

  // ---- the CAS browser ----------------------------------------------------------------------

  function casPage() {
    const q = {
      instance: params.get("instance") || "", digest: params.get("digest") || "",
      view: params.get("view") || "auto", path: params.get("path") || "", trail: params.get("trail") || "",
    };
    const [instance, list] = instanceInput(q.instance, "cas-instance");
    const digest = h("input", { id: "cas-digest", name: "digest", value: q.digest, size: 75, placeholder: "HASH/SIZE or HASH-SIZE",
      spellcheck: "false", maxlength: 300 });
    const view = h("select", { id: "cas-view", name: "view" },
      ["auto", "directory", "tree", "text"].map((v) => h("option", { value: v, selected: v === q.view }, v)));
    const form = h("form", { class: "toolbar", id: "cas-form", method: "get", action: "/ui/cas" },
      h("label", {}, "Instance ", instance, list),
      h("label", { class: "grow" }, "Digest ", digest),
      h("label", {}, "Show as ", view),
      h("button", { type: "submit", id: "cas-go" }, "Look up"));
    const out = h("div", { id: "cas-out" });
    app.replaceChildren(h("h1", {}, "CAS browser"), form, out);
    if (!q.digest) {
      out.append(h("p", { class: "muted" }, "Give a blob's digest to see it: a Directory is listed, other blobs are shown as text."));
      return;
    }
    api("/api/v1/blob", { instance: q.instance, digest: q.digest, view: q.view, path: q.path })
      .then((b) => out.replaceChildren(...renderBlob(b, q)))
      .catch((e) => { out.replaceChildren(errorBox(e)); setStatus("error", true); });
  }

  function renderBlob(b, q) {
    const inst = b.instance;
    const trail = q.trail ? q.trail.split("/").filter(Boolean) : [];
    const where = b.view === "tree" ? (b.path ? "/" + b.path : "/") : (trail.length ? "/" + trail.join("/") : "");
    const head = section("Blob", kv([
      ["Digest", h("span", { class: "mono", id: "cas-digest-shown" }, b.digest)],
      ["Size", `${bytes(b.size)} (${b.size} bytes)`],
      ["Function", b.function],
      ["Shown as", b.view + (where ? " " + where : "")],
      ["Download", downloadLink(inst, b.digest, trail.length ? trail[trail.length - 1] : "", "download the blob")],
    ]));
    const out = [head];
    if (b.directory) {
      const dirLink = (entry) => b.view === "tree"
        ? link("/ui/cas", { instance: inst, digest: b.digest, view: "tree", path: (b.path ? b.path + "/" : "") + entry.name }, entry.name + "/")
        : link("/ui/cas", { instance: inst, digest: entry.digest, view: "directory", trail: [...trail, entry.name].join("/") }, entry.name + "/");
      const rows = [
        ...b.directory.directories.map((x) => h("tr", { class: "dir" }, h("td", {}, "dir"), h("td", { class: "mono" }, dirLink(x)),
          h("td", { class: "num" }, "–"), h("td", {}), h("td", { class: "mono" }, short(x.digest)), h("td", {}))),
        ...b.directory.files.map((f) => h("tr", {}, h("td", {}, "file"),
          h("td", { class: "mono" }, link("/ui/cas", { instance: inst, digest: f.digest, view: "text", trail: [...trail, f.name].join("/") }, f.name)),
          h("td", { class: "num" }, bytes(f.size)), h("td", {}, f.is_executable ? "exec" : ""),
          h("td", { class: "mono" }, short(f.digest)), h("td", {}, downloadLink(inst, f.digest, f.name)))),
        ...b.directory.symlinks.map((s) => h("tr", {}, h("td", {}, "link"), h("td", { class: "mono" }, s.name),
          h("td", { colspan: 4, class: "mono" }, "→ " + s.target))),
      ];
      const up = b.view === "tree" && b.path
        ? link("/ui/cas", { instance: inst, digest: b.digest, view: "tree", path: b.path.split("/").slice(0, -1).join("/") }, "↑ parent directory")
        : null;
      out.push(section("Directory" + (where ? " " + where : ""), up,
        rows.length ? table(["", "Name", "Size#", "", "Digest", ""], rows, { id: "cas-listing" }) : h("p", { class: "muted" }, "empty"),
        b.directory.truncated ? h("p", { class: "muted" }, "Only the first 10000 entries of each kind are listed.") : null));
    } else if (b.binary) {
      out.push(section("Contents (binary, first bytes in hex)", h("pre", { class: "output", id: "cas-hex" },
        (b.hex.match(/.{1,64}/g) || []).join("\n"))));
    } else {
      out.push(section("Contents", h("pre", { class: "output", id: "cas-text" }, b.text),
        b.truncated ? h("p", { class: "muted" }, "Shown in part; download the blob for all of it.") : null));
    }
    setStatus("");
    return out;
  }

  // ---- routing ------------------------------------------------------------------------------

  const pages = {
    "/ui": ["overview", overviewPage], "/ui/": ["overview", overviewPage],
    "/ui/operations": ["operations", operationsPage], "/ui/operation": ["operations", operationPage],
    "/ui/workers": ["workers", workersPage], "/ui/cas": ["cas", casPage],
    "/ui/builds": ["builds", buildsPage], "/ui/build": ["builds", buildPage],
  };
  const [current, render] = pages[location.pathname] || pages["/ui/"];
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === current) a.classList.add("active");
  }
  render();
})();
