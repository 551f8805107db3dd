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
            o.invocation_id ? h("div", { class: "muted mono" }, o.invocation_id) : null,
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
    async function load() {
      let d;
      try {
        d = await api("/api/v1/operation", { name });
      } catch (e) {
        body.replaceChildren(errorBox(e));
        setStatus("error", true);
        return;
      }
      body.replaceChildren(...renderOperation(d));
      setStatus(d.operation.stage === "COMPLETED" ? "finished" : "updating every 2 s");
      if (d.operation.stage !== "COMPLETED") setTimeout(load, POLL_MS);
    }
    load();
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
      ["Invocation", o.invocation_id || "–"],
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
  };
  const [current, render] = pages[location.pathname] || pages["/ui/"];
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === current) a.classList.add("active");
  }
  render();
})();
