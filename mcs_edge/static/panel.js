// mcs_edge admin panel: plain JavaScript over the JSON admin API (served by mcs_edge/tx/ops/panel.py).
// Every request goes to /panel/api/<path>, which is the admin API's /api/<path> reached with the session
// cookie; changes carry the session's CSRF token. Text from the API is only ever set with textContent.
"use strict";

(function () {
  let csrf = "";
  let refreshTimer = null;
  let keepFlash = false;
  const FIELDS = ["id", "name", "domains", "backend_sip", "backend_http", "media", "certificate",
    "allowed_origins", "path", "echo"];
  const LISTS = new Set(["domains", "allowed_origins"]);
  const OPTIONAL = new Set(["name", "backend_http", "allowed_origins"]);

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch("/panel/api/" + path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (resp.status === 401 && path !== "session") showSignin();
    return { status: resp.status, data: data || {} };
  }

  function flash(text, keep) {
    keepFlash = !!keep;
    const f = $("flash");
    f.textContent = text;
    f.hidden = !text;
  }

  function show(page) {
    for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "page-" + page;
    if (refreshTimer) { clearInterval(refreshTimer); refreshTimer = null; }
  }

  function showSignin() {
    csrf = "";
    $("nav").hidden = true;
    show("signin");
  }

  // -- sign in / out ---------------------------------------------------------------------------
  async function signIn(ev) {
    ev.preventDefault();
    const r = await api("POST", "session", {
      operator: $("signin-operator").value.trim(), password: $("signin-password").value,
    });
    $("signin-password").value = "";
    if (r.status !== 200) {
      $("signin-error").textContent = r.data.error || ("sign-in failed (" + r.status + ")");
      return;
    }
    $("signin-error").textContent = "";
    started(r.data);
  }

  function started(session) {
    csrf = session.csrf;
    $("who").textContent = "signed in as " + session.operator;
    $("nav").hidden = false;
    if (!location.hash || location.hash === "#/signin") location.hash = "#/customers";
    else route();
  }

  async function signOut() {
    await api("DELETE", "session");
    flash("");
    showSignin();
  }

  // -- customers -------------------------------------------------------------------------------
  function certCell(cert) {
    if (!cert) return el("span", { class: "muted" }, "-");
    if (cert.error) return el("span", { class: "bad" }, cert.mode + ": " + cert.error);
    if (cert.expires_in === undefined) return el("span", { class: "muted" }, cert.mode + ": not loaded yet");
    const days = Math.floor(cert.expires_in / 86400);
    const cls = days < 14 ? "bad" : (days < 30 ? "fair" : "good");
    return el("span", {}, cert.mode + ", ", el("span", { class: cls }, days + " days"),
      el("br"), el("span", { class: "muted" }, "until " + cert.not_after.slice(0, 10)));
  }

  function checkCell(rep) {
    if (!rep) return el("span", { class: "muted" }, "none yet");
    const f = rep.figures || {};
    const cls = rep.result === "pass" ? "good" : (rep.result === "warn" ? "fair" : "bad");
    const parts = [];
    if (f.rtt_ms !== undefined) parts.push("RTT " + f.rtt_ms.toFixed(1) + " ms");
    if (f.jitter_ms !== undefined) parts.push("jitter " + f.jitter_ms.toFixed(1) + " ms");
    if (f.loss_pct !== undefined) parts.push("loss " + f.loss_pct.toFixed(1) + " %");
    const when = new Date(rep.time * 1000).toISOString().slice(0, 16).replace("T", " ");
    return el("span", {}, el("span", { class: cls }, rep.result), " " + when + " UTC",
      el("br"), el("span", { class: "muted" }, parts.join(", ")));
  }

  async function customers() {
    show("customers");
    const [t, c, conn, chk] = await Promise.all([api("GET", "tenants"), api("GET", "certificates"),
      api("GET", "connections"), api("GET", "checks")]);
    const checks = chk.data.checks || {};
    if (t.status !== 200) return;
    const certs = {};
    for (const x of c.data.certificates || []) certs[x.tenant] = x;
    const agents = {};
    for (const x of conn.data.connections || []) {
      if (x.registered && x.aor) (agents[x.tenant] = agents[x.tenant] || new Set()).add(x.aor);
    }
    const body = $("customers-table").tBodies[0];
    body.replaceChildren();
    for (const row of t.data.tenants) {
      const names = [...(agents[row.id] || [])].sort();
      body.append(el("tr", { "data-tenant": row.id },
        el("td", {}, row.id),
        el("td", {}, row.name || ""),
        el("td", {}, row.domains.join(", ")),
        el("td", {}, row.backend_sip),
        el("td", {}, row.media),
        el("td", {}, certCell(certs[row.id])),
        el("td", { class: "agents" }, row.registrations + " registered",
          names.length ? el("ul", { class: "list" }, ...names.map((n) => el("li", {}, n))) : null),
        el("td", { class: "calls" }, row.calls),
        el("td", { class: "check" }, checkCell(checks[row.id])),
        el("td", { class: "actions" },
          el("a", { class: "button", href: "#/customers/" + encodeURIComponent(row.id) + "/edit",
            id: "edit-" + row.id }, "Edit"), " ",
          el("a", { class: "button", href: "#/customers/" + encodeURIComponent(row.id) + "/remove",
            id: "remove-" + row.id }, "Remove"))));
    }
  }

  function clearErrors() {
    $("edit-errors").replaceChildren();
    for (const f of FIELDS) {
      $("error-" + f).textContent = "";
      $("field-" + f).classList.remove("invalid");
    }
  }

  function formValues(editing) {
    const out = {};
    for (const f of FIELDS) {
      const input = $("field-" + f);
      if (input.type === "checkbox") { out[f] = input.checked; continue; }
      const text = input.value.trim();
      if (LISTS.has(f)) {
        const items = text.split(/[\s,]+/).filter((x) => x);
        if (items.length) out[f] = items;
        else if (editing && OPTIONAL.has(f)) out[f] = null;
      } else if (text) out[f] = text;
      else if (editing && OPTIONAL.has(f)) out[f] = null;  // PATCH: null removes the key
    }
    if (editing) delete out.id;
    return out;
  }

  async function editForm(tid) {
    show("edit");
    clearErrors();
    $("edit-form").dataset.tenant = tid || "";
    $("edit-title").textContent = tid ? "Edit customer " + tid : "Add customer";
    $("field-id").disabled = !!tid;
    for (const f of FIELDS) {
      const input = $("field-" + f);
      if (input.type === "checkbox") input.checked = f === "path";
      else if (input.tagName === "SELECT") input.selectedIndex = 0;
      else input.value = "";
    }
    if (!tid) return;
    const r = await api("GET", "tenants/" + encodeURIComponent(tid));
    if (r.status !== 200) { flash(r.data.error || "cannot read " + tid); return; }
    const t = r.data.tenant || r.data;
    for (const f of FIELDS) {
      const input = $("field-" + f);
      const v = t[f];
      if (input.type === "checkbox") input.checked = v === undefined ? f === "path" : !!v;
      else if (Array.isArray(v)) input.value = v.join(", ");
      else if (v !== undefined && v !== null) input.value = String(v);
    }
  }

  async function save(ev) {
    ev.preventDefault();
    clearErrors();
    const tid = $("edit-form").dataset.tenant;
    const r = tid
      ? await api("PATCH", "tenants/" + encodeURIComponent(tid), formValues(true))
      : await api("POST", "tenants", formValues(false));
    if (r.status === 200 || r.status === 201) {
      flash(tid ? "Customer " + tid + " saved" : "Customer " + (r.data.tenant || "") + " added", true);
      location.hash = "#/customers";
      return;
    }
    const errors = r.data.errors && r.data.errors.length ? r.data.errors : [r.data.error || "refused"];
    for (const e of errors) {
      $("edit-errors").append(el("li", {}, e));
      // "tenants[3].backend_sip: ..." -> the backend_sip field
      const m = /^tenants\[\d+\]\.([a-z_]+)/.exec(e);
      if (m && FIELDS.includes(m[1])) {
        $("error-" + m[1]).textContent = e;
        $("field-" + m[1]).classList.add("invalid");
      }
    }
  }

  function removePage(tid) {
    show("remove");
    $("remove-id").textContent = tid;
    $("confirm-remove").dataset.tenant = tid;
  }

  async function confirmRemove() {
    const tid = $("confirm-remove").dataset.tenant;
    const r = await api("DELETE", "tenants/" + encodeURIComponent(tid));
    flash(r.status === 200 ? "Customer " + tid + " removed" : (r.data.error || "refused (" + r.status + ")"), true);
    location.hash = "#/customers";
  }

  // -- live calls ------------------------------------------------------------------------------
  function pct(v) { return v === null || v === undefined ? "-" : (v * 100).toFixed(1) + " %"; }
  function ms(v) { return v === null || v === undefined ? "-" : v.toFixed(1) + " ms"; }
  function mosCell(v) {
    if (v === null || v === undefined) return el("span", { class: "muted" }, "-");
    return el("span", { class: v >= 4 ? "good" : (v >= 3.6 ? "fair" : "bad") }, v.toFixed(2));
  }
  function legCell(leg) {
    if (!leg) return "-";
    return "loss " + pct(leg.loss) + ", jitter " + ms(leg.jitter_ms) + ", RTT " + ms(leg.rtt_ms) +
      ", MOS " + (leg.mos === null ? "-" : leg.mos.toFixed(2));
  }

  async function callsOnce() {
    const r = await api("GET", "calls");
    if (r.status !== 200) return;
    const body = $("calls-table").tBodies[0];
    body.replaceChildren();
    for (const c of r.data.calls) {
      const q = c.quality || { legs: {} };
      body.append(el("tr", { "data-call": c.call_id, "data-tenant": c.tenant },
        el("td", {}, c.tenant), el("td", {}, c.agent || "-"),
        el("td", {}, c.direction === "from_client" ? "outbound" : "inbound"), el("td", {}, c.state),
        el("td", {}, Math.round(c.age) + " s"), el("td", { class: "mos" }, mosCell(q.mos)),
        el("td", { class: "loss" }, pct(q.loss)), el("td", { class: "jitter" }, ms(q.jitter_ms)), el("td", { class: "rtt" }, ms(q.rtt_ms)),
        el("td", {}, legCell(q.legs.client)), el("td", {}, legCell(q.legs.pbx))));
    }
  }

  function calls() {
    show("calls");
    callsOnce();
    refreshTimer = setInterval(callsOnce, 2000);
  }

  // -- bans ------------------------------------------------------------------------------------
  async function bans() {
    show("bans");
    const r = await api("GET", "bans");
    if (r.status !== 200) return;
    const body = $("bans-table").tBodies[0];
    body.replaceChildren();
    for (const b of r.data.bans) {
      body.append(el("tr", { "data-source": b.source },
        el("td", {}, b.source), el("td", {}, b.tenant || "any"), el("td", {}, b.failures),
        el("td", {}, Math.round(b.remaining) + " s"),
        el("td", {}, el("button", { type: "button", onclick: () => lift(b.source) }, "Lift"))));
    }
  }

  async function lift(source) {
    const r = await api("DELETE", "bans/" + encodeURIComponent(source));
    flash(r.status === 200 ? "Ban on " + source + " lifted" : (r.data.error || "refused"));
    bans();
  }

  async function reload() {
    const r = await api("POST", "reload");
    flash(r.status === 200 ? "Configuration reloaded"
      : "Reload refused: " + (r.data.errors || [r.data.error]).join("; "));
  }

  // -- routing ---------------------------------------------------------------------------------
  function route() {
    if (!csrf) { showSignin(); return; }
    if (keepFlash) keepFlash = false;
    else flash("");
    const h = location.hash || "#/customers";
    let m;
    if (h === "#/customers/new") editForm("");
    else if ((m = /^#\/customers\/([^/]+)\/edit$/.exec(h))) editForm(decodeURIComponent(m[1]));
    else if ((m = /^#\/customers\/([^/]+)\/remove$/.exec(h))) removePage(decodeURIComponent(m[1]));
    else if (h === "#/calls") calls();
    else if (h === "#/bans") bans();
    else customers();
  }

  document.addEventListener("DOMContentLoaded", async () => {
    $("signin-form").addEventListener("submit", signIn);
    $("edit-form").addEventListener("submit", save);
    $("confirm-remove").addEventListener("click", confirmRemove);
    $("signout").addEventListener("click", signOut);
    $("reload").addEventListener("click", reload);
    window.addEventListener("hashchange", route);
    const r = await api("GET", "session");
    if (r.status === 200) started(r.data);
    else showSignin();
  });
})();
