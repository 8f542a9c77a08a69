// mcs_edge network check: plain JavaScript, no build step, no library.
//
// Tests, in order: TLS + WebSocket reachability, SIP OPTIONS round trips over WSS, and a WebRTC
// call to the edge's echo service (ICE and DTLS times, round-trip time, jitter, loss and the bitrate
// sustained for CALL_SECONDS at the product's 60 KB/s budget), then shows a pass/warn/fail report
// that can be copied, and posts the figures (no personal data) to the edge.
//
// The SIP user agent here is deliberately minimal (RFC 3261 over RFC 7118): OPTIONS, INVITE, ACK,
// BYE, and a 200 to a BYE or OPTIONS from the edge. The call's audio is a generated tone (no
// microphone); Opus is asked for a constant 440 kbit/s so the echoed stream carries about 56 KB/s,
// just under the 60 KB/s per-device budget the edge polices at.
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("check-config").textContent);
  const DOMAIN = config.domain || location.hostname;
  const WS_URL = `wss://${location.host}/`;
  const ECHO_URI = `sip:echo@${DOMAIN}`;
  const CALL_SECONDS = 10;
  const OPUS_BITRATE = 440000; // bit/s asked of the encoder (constant bitrate)
  const BUDGET = 60000; // bytes/s per device (the product sheet)
  const TIMEOUT = 10000;

  // name, unit, pass below, warn below (higher is worse), or a custom grade
  const STEPS = [
    { id: "ws", name: "TLS + WebSocket" },
    { id: "options", name: "SIP OPTIONS over WSS" },
    { id: "setup", name: "Echo call set-up" },
    { id: "ice", name: "ICE connection" },
    { id: "dtls", name: "DTLS handshake" },
    { id: "rtt", name: "Round-trip time" },
    { id: "jitter", name: "Jitter" },
    { id: "loss", name: "Packet loss" },
    { id: "bitrate", name: "Sustained bitrate" },
  ];
  const LIMITS = {
    ws: [1000, 3000], options: [200, 500], setup: [500, 2000], ice: [1000, 3000], dtls: [1000, 3000],
    rtt: [150, 300], jitter: [20, 50], loss: [1, 3],
  };

  const $ = (id) => document.getElementById(id);
  const rand = (n) => Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => b.toString(16).padStart(2, "0")).join("");
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const now = () => performance.now();
  const round = (x, digits = 0) => (x === null || x === undefined || !isFinite(x) ? null : Number(x.toFixed(digits)));
  const grade = (value, [pass, warn]) => (value < pass ? "pass" : value < warn ? "warn" : "fail");
  const worst = (grades) => (grades.includes("fail") ? "fail" : grades.includes("warn") ? "warn" : "pass");

  // ------------------------------------------------------------------------------- SIP over WS
  class SipSocket {
    constructor(url) {
      this.url = url;
      this.host = `${rand(6)}.invalid`;
      this.pending = new Map(); // branch -> {resolve, reject, timer, onProvisional}
      this.onRequest = null;
      this.onClose = null; // called once when an open WebSocket closes
    }

    open() {
      return new Promise((resolve, reject) => {
        const start = now();
        const ws = new WebSocket(this.url, "sip");
        const timer = setTimeout(() => { ws.close(); reject(new Error("no answer in 10 s")); }, TIMEOUT);
        ws.onopen = () => {
          clearTimeout(timer);
          if (ws.protocol !== "sip") { ws.close(); reject(new Error("the server did not accept subprotocol sip")); return; }
          resolve(now() - start);
        };
        ws.onerror = () => { clearTimeout(timer); reject(new Error("connection failed (TLS, proxy or firewall)")); };
        ws.onclose = () => {
          for (const p of this.pending.values()) p.reject(new Error("connection closed"));
          this.pending.clear();
          if (this.onClose && this.ws === ws) this.onClose();
        };
        ws.onmessage = (ev) => this.receive(typeof ev.data === "string" ? ev.data : "");
        this.ws = ws;
      });
    }

    close() { this.onClose = null; if (this.ws) this.ws.close(); }

    get open_() { return !!this.ws && this.ws.readyState === WebSocket.OPEN; }

    static parse(text) {
      const cut = text.indexOf("\r\n\r\n");
      const head = (cut >= 0 ? text.slice(0, cut) : text).split("\r\n");
      const msg = { first: head[0], headers: {}, body: cut >= 0 ? text.slice(cut + 4) : "" };
      const compact = { v: "via", f: "from", t: "to", i: "call-id", m: "contact", l: "content-length", c: "content-type" };
      for (const line of head.slice(1)) {
        const colon = line.indexOf(":");
        if (colon < 0) continue;
        let name = line.slice(0, colon).trim().toLowerCase();
        name = compact[name] || name;
        (msg.headers[name] = msg.headers[name] || []).push(line.slice(colon + 1).trim());
      }
      const m = /^SIP\/2\.0 (\d{3})/.exec(msg.first);
      msg.status = m ? Number(m[1]) : 0;
      msg.method = m ? null : msg.first.split(" ")[0];
      msg.header = (name) => (msg.headers[name] || [])[0] || "";
      return msg;
    }

    receive(text) {
      if (!text.trim()) return; // keepalive
      const msg = SipSocket.parse(text);
      if (msg.status) {
        const branch = (/branch=([^;,\s]+)/.exec(msg.header("via")) || [])[1];
        const p = this.pending.get(branch);
        if (!p) return;
        if (msg.status < 200) { if (p.onProvisional) p.onProvisional(msg); return; }
        clearTimeout(p.timer);
        this.pending.delete(branch);
        p.resolve(msg);
      } else if (msg.method !== "ACK") {
        // a request from the edge (BYE when the echo ends, OPTIONS keepalive): 200 OK
        const copy = ["via", "from", "to", "call-id", "cseq"].flatMap((h) => (msg.headers[h] || []).map((v) => `${h === "call-id" ? "Call-ID" : h === "cseq" ? "CSeq" : h[0].toUpperCase() + h.slice(1)}: ${v}`));
        this.ws.send(`SIP/2.0 200 OK\r\n${copy.join("\r\n")}\r\nContent-Length: 0\r\n\r\n`);
        if (this.onRequest) this.onRequest(msg);
      }
    }

    build(method, uri, { callId, fromTag, toUri, toTag, cseq, body = "", branch }) {
      const lines = [
        `${method} ${uri} SIP/2.0`,
        `Via: SIP/2.0/WSS ${this.host};branch=${branch}`,
        "Max-Forwards: 70",
        `From: <sip:network-check@${DOMAIN}>;tag=${fromTag}`,
        `To: <${toUri}>${toTag ? `;tag=${toTag}` : ""}`,
        `Call-ID: ${callId}`,
        `CSeq: ${cseq} ${method}`,
        `Contact: <sip:network-check@${this.host};transport=ws>`,
        "User-Agent: mcs-edge-network-check",
      ];
      if (body) lines.push("Content-Type: application/sdp");
      lines.push(`Content-Length: ${new TextEncoder().encode(body).length}`, "", "");
      return lines.join("\r\n") + body;
    }

    request(method, uri, opts, onProvisional) {
      const branch = `z9hG4bK${rand(8)}`;
      const text = this.build(method, uri, { ...opts, branch });
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { this.pending.delete(branch); reject(new Error(`no answer to ${method} in 10 s`)); }, TIMEOUT);
        this.pending.set(branch, { resolve, reject, timer, onProvisional });
        this.ws.send(text);
      });
    }

    ack(uri, opts) { this.ws.send(this.build("ACK", uri, { ...opts, branch: `z9hG4bK${rand(8)}` })); }
  }

  const tagOf = (value) => (/;\s*tag=([^;\s>]+)/.exec(value.slice(value.lastIndexOf(">") + 1)) || [])[1] || null;
  const uriOf = (value) => { const m = /<([^>]+)>/.exec(value); return m ? m[1] : value.split(";")[0].trim(); };

  // Ask Opus for a constant high bitrate: the encoder follows the answer's fmtp.
  function withBitrate(sdp, bitrate) {
    const pt = (/a=rtpmap:(\d+) opus\/48000/i.exec(sdp) || [])[1];
    if (!pt) return sdp;
    const extra = `maxaveragebitrate=${bitrate};cbr=1;stereo=1`;
    const fmtp = new RegExp(`^a=fmtp:${pt} (.*)$`, "m");
    if (fmtp.test(sdp)) return sdp.replace(fmtp, (line, params) => `a=fmtp:${pt} ${params.replace(/;?(maxaveragebitrate|cbr|stereo)=\d+/g, "")};${extra}`);
    return sdp.replace(new RegExp(`^(a=rtpmap:${pt} .*)$`, "m"), `$1\r\na=fmtp:${pt} ${extra}`);
  }

  // ------------------------------------------------------------------------------------ stats
  async function snapshot(pc) {
    const stats = await pc.getStats();
    const out = { t: now(), inbound: null, outbound: null, pair: null };
    let pairId = null;
    stats.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") out.inbound = s;
      else if (s.type === "outbound-rtp" && s.kind === "audio") out.outbound = s;
      else if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    });
    stats.forEach((s) => {
      if (s.type === "candidate-pair" && (s.id === pairId || (!pairId && s.nominated && s.state === "succeeded"))) out.pair = s;
    });
    return out;
  }

  // ---------------------------------------------------------------------------- one echo call
  async function echoCall(sip, track, { bitrate = OPUS_BITRATE, seconds = CALL_SECONDS, onTick = null, play = null } = {}) {
    const figures = {};
    const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
    const times = {};
    pc.addEventListener("iceconnectionstatechange", () => {
      const s = pc.iceConnectionState;
      if ((s === "connected" || s === "completed") && !times.ice) times.ice = now();
    });
    pc.addEventListener("connectionstatechange", () => { if (pc.connectionState === "connected" && !times.dtls) times.dtls = now(); });
    pc.addEventListener("track", (ev) => { if (play) play(ev.streams[0] || new MediaStream([ev.track])); });
    pc.addTransceiver(track, { direction: "sendrecv" });
    await pc.setLocalDescription(await pc.createOffer());
    const dialog = { callId: `${rand(12)}@network-check`, fromTag: rand(6), toUri: ECHO_URI, cseq: 1 };
    let remoteTarget = ECHO_URI;
    const call = { pc, sip };
    const hangup = async () => {
      if (!dialog.toTag) return;
      dialog.cseq += 1;
      const toTag = dialog.toTag;
      dialog.toTag = null;
      try { await call.sip.request("BYE", remoteTarget, { ...dialog, toTag }); } catch (e) { /* the edge may have ended it */ }
    };
    // An ICE restart in a re-INVITE of the same dialog (on whatever connection call.sip is now):
    // what reconnect.js asks for after a network change.
    const reoffer = async () => {
      await pc.setLocalDescription(await pc.createOffer({ iceRestart: true }));
      dialog.cseq += 1;
      const answer = await call.sip.request("INVITE", remoteTarget, { ...dialog, body: pc.localDescription.sdp });
      if (answer.status !== 200) {
        await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
        throw new Error(`re-INVITE refused: ${answer.first.slice(8)}`);
      }
      call.sip.ack(remoteTarget, { ...dialog });
      await pc.setRemoteDescription({ type: "answer", sdp: answer.body });
    };
    call.hangup = hangup;
    call.reoffer = reoffer;
    try {
      const t0 = now();
      const answer = await sip.request("INVITE", ECHO_URI, { ...dialog, body: pc.localDescription.sdp });
      figures.setup_ms = now() - t0;
      if (answer.status !== 200) throw new Error(`the echo call was refused: ${answer.first.slice(8)}`);
      dialog.toTag = tagOf(answer.header("to"));
      remoteTarget = answer.header("contact") ? uriOf(answer.header("contact")) : ECHO_URI;
      sip.ack(remoteTarget, { ...dialog, toTag: dialog.toTag });
      const tAnswer = now();
      await pc.setRemoteDescription({ type: "answer", sdp: bitrate ? withBitrate(answer.body, bitrate) : answer.body });
      const deadline = now() + TIMEOUT;
      while (pc.connectionState !== "connected") {
        if (pc.connectionState === "failed" || now() > deadline) {
          figures.ice_ms = times.ice ? times.ice - tAnswer : null;
          throw new Error(times.ice ? "DTLS did not complete (UDP blocked after ICE?)" : "ICE did not connect: UDP to the edge is blocked");
        }
        await sleep(20);
      }
      figures.ice_ms = times.ice - tAnswer;
      figures.dtls_ms = times.dtls - times.ice;
      figures.call = call;
      if (!seconds) return figures;
      await sleep(1000); // let the encoder reach its rate
      const first = await snapshot(pc);
      const jitters = [];
      for (let i = 1; i <= seconds; i += 1) {
        await sleep(1000);
        const s = await snapshot(pc);
        if (s.inbound && s.inbound.jitter !== undefined) jitters.push(s.inbound.jitter * 1000);
        if (onTick) onTick(i, seconds);
      }
      const last = await snapshot(pc);
      const span = (last.t - first.t) / 1000;
      const inb = (s, k) => (s.inbound ? s.inbound[k] || 0 : 0);
      const outb = (s, k) => (s.outbound ? s.outbound[k] || 0 : 0);
      const received = inb(last, "packetsReceived") - inb(first, "packetsReceived");
      const lost = Math.max(0, inb(last, "packetsLost") - inb(first, "packetsLost"));
      figures.packets_sent = outb(last, "packetsSent") - outb(first, "packetsSent");
      figures.packets_received = received;
      figures.packets_total = inb(last, "packetsReceived");
      figures.loss_pct = received + lost > 0 ? (100 * lost) / (received + lost) : 100;
      const bytes = (s, f) => f(s, "bytesReceived") + f(s, "headerBytesReceived");
      const sentBytes = (s) => outb(s, "bytesSent") + outb(s, "headerBytesSent");
      figures.bitrate_Bps = span > 0 ? (bytes(last, inb) - bytes(first, inb)) / span : 0;
      figures.sent_Bps = span > 0 ? (sentBytes(last) - sentBytes(first)) / span : 0;
      figures.jitter_ms = jitters.length ? jitters.reduce((a, b) => a + b, 0) / jitters.length : null;
      const pair = last.pair;
      if (pair && pair.responsesReceived > 0 && pair.totalRoundTripTime !== undefined) {
        figures.rtt_ms = (1000 * pair.totalRoundTripTime) / pair.responsesReceived;
      } else if (pair && pair.currentRoundTripTime !== undefined) {
        figures.rtt_ms = 1000 * pair.currentRoundTripTime;
      } else {
        figures.rtt_ms = null;
      }
      return figures;
    } finally {
      if (seconds) {
        await hangup();
        pc.close();
      }
    }
  }

  function toneTrack() {
    const ctx = new AudioContext();
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = 440;
    gain.gain.value = 0.2;
    const dest = ctx.createMediaStreamDestination();
    osc.connect(gain).connect(dest);
    osc.start();
    return { track: dest.stream.getAudioTracks()[0], stop: () => { osc.stop(); ctx.close(); } };
  }

  // ----------------------------------------------------------------------------------- the UI
  const rows = {};
  function drawSteps() {
    const body = $("steps").querySelector("tbody");
    body.textContent = "";
    for (const step of STEPS) {
      const tr = document.createElement("tr");
      tr.id = `step-${step.id}`;
      const name = document.createElement("td");
      name.textContent = step.name;
      const badge = document.createElement("td");
      const span = document.createElement("span");
      span.className = "badge wait";
      span.textContent = "waiting";
      badge.appendChild(span);
      const detail = document.createElement("td");
      tr.append(name, badge, detail);
      body.appendChild(tr);
      rows[step.id] = { badge: span, detail, result: null, text: "" };
    }
  }
  function show(id, result, text) {
    const row = rows[id];
    row.result = result;
    row.text = text;
    row.badge.className = `badge ${result}`;
    row.badge.textContent = { pass: "PASS", warn: "WARN", fail: "FAIL", run: "running", wait: "waiting" }[result];
    row.detail.textContent = text;
  }
  const ms = (x) => `${x < 10 ? x.toFixed(1) : Math.round(x)} ms`;

  function reportText(overall, started) {
    const lines = [
      `mcs_edge network check for ${DOMAIN}`,
      `When: ${started.toISOString()}`,
      `Browser: ${navigator.userAgent}`,
      `Overall: ${overall.toUpperCase()}`,
      "",
    ];
    for (const step of STEPS) {
      const row = rows[step.id];
      const result = row.result && row.result !== "run" && row.result !== "wait" ? row.result.toUpperCase() : "----";
      lines.push(`[${result}] ${step.name.padEnd(22)} ${row.text}`);
    }
    return lines.join("\n");
  }

  async function runCheck() {
    $("start").disabled = true;
    $("talk").disabled = true;
    $("summary").hidden = true;
    drawSteps();
    const started = new Date();
    const figures = {};
    const sip = new SipSocket(WS_URL);
    let tone = null;
    const skipRest = (from, why) => {
      for (const step of STEPS.slice(STEPS.findIndex((s) => s.id === from))) if (!rows[step.id].result || rows[step.id].result === "run") show(step.id, "fail", why);
    };
    try {
      show("ws", "run", "connecting");
      try {
        figures.ws_ms = await sip.open();
      } catch (e) {
        show("ws", "fail", e.message);
        skipRest("options", "not tested: no WebSocket");
        return finish(figures, started);
      }
      show("ws", grade(figures.ws_ms, LIMITS.ws), `connected in ${ms(figures.ws_ms)} (${WS_URL})`);

      show("options", "run", "sending OPTIONS");
      const rtts = [];
      try {
        for (let i = 0; i < 5; i += 1) {
          const t0 = now();
          const resp = await sip.request("OPTIONS", ECHO_URI, { callId: `${rand(12)}@network-check`, fromTag: rand(6), toUri: ECHO_URI, cseq: 1 });
          rtts.push(now() - t0);
          if (resp.status >= 300 && resp.status !== 405) throw new Error(`answered ${resp.first.slice(8)}`);
        }
      } catch (e) {
        show("options", "fail", e.message);
        skipRest("setup", "not tested: SIP failed");
        return finish(figures, started);
      }
      rtts.sort((a, b) => a - b);
      figures.options_ms = rtts[Math.floor(rtts.length / 2)];
      show("options", grade(figures.options_ms, LIMITS.options), `round trip ${ms(figures.options_ms)} (median of ${rtts.length})`);

      show("setup", "run", "calling the echo service");
      tone = toneTrack();
      let call;
      try {
        call = await echoCall(sip, tone.track, {
          onTick: (i, n) => show("bitrate", "run", `measuring: ${i} of ${n} s`),
        });
      } catch (e) {
        if (rows.setup.result === "run") {
          show("setup", "fail", e.message);
          skipRest("ice", "not tested: the echo call failed");
        }
        return finish(figures, started);
      }
      Object.assign(figures, call);
      delete figures.call;
      show("setup", grade(figures.setup_ms, LIMITS.setup), `200 OK in ${ms(figures.setup_ms)}`);
      show("ice", grade(figures.ice_ms, LIMITS.ice), `connected in ${ms(figures.ice_ms)}`);
      show("dtls", grade(figures.dtls_ms, LIMITS.dtls), `connected in ${ms(figures.dtls_ms)}`);
      if (figures.rtt_ms === null) show("rtt", "warn", "not measured by this browser");
      else show("rtt", grade(figures.rtt_ms, LIMITS.rtt), ms(figures.rtt_ms));
      if (figures.jitter_ms === null) show("jitter", "warn", "not measured by this browser");
      else show("jitter", grade(figures.jitter_ms, LIMITS.jitter), ms(figures.jitter_ms));
      show("loss", grade(figures.loss_pct, LIMITS.loss), `${figures.loss_pct.toFixed(2)} % (${figures.packets_received} packets back, ${figures.packets_sent} sent)`);
      const kb = (x) => `${(x / 1000).toFixed(1)} KB/s`;
      const ratio = figures.sent_Bps > 0 ? figures.bitrate_Bps / figures.sent_Bps : 0;
      let bitrate = figures.bitrate_Bps >= 0.8 * BUDGET && ratio >= 0.95 ? "pass" : figures.bitrate_Bps >= 0.5 * BUDGET && ratio >= 0.8 ? "warn" : "fail";
      let note = "";
      if (bitrate !== "pass" && ratio >= 0.95) {
        bitrate = "warn";
        note = " (the browser sent less than asked; the network carried all of it)";
      }
      show("bitrate", bitrate, `${kb(figures.bitrate_Bps)} back of ${kb(figures.sent_Bps)} sent for ${CALL_SECONDS} s (budget ${kb(BUDGET)})${note}`);
    } finally {
      if (tone) tone.stop();
      sip.close();
    }
    return finish(figures, started);
  }

  function finish(figures, started) {
    const results = STEPS.map((s) => rows[s.id].result).filter((r) => r === "pass" || r === "warn" || r === "fail");
    const overall = results.length === STEPS.length ? worst(results) : "fail";
    const text = reportText(overall, started);
    $("overall").textContent = { pass: "Your connection is good for calls.", warn: "Calls should work, with some risk: see the warnings.", fail: "Calls will have problems on this connection: see the failures." }[overall];
    $("overall").className = overall;
    $("report").value = text;
    $("summary").hidden = false;
    $("start").disabled = false;
    $("talk").disabled = false;
    const payload = { result: overall };
    for (const key of ["ws_ms", "options_ms", "setup_ms", "ice_ms", "dtls_ms", "rtt_ms", "jitter_ms", "loss_pct", "bitrate_Bps"]) {
      const value = round(figures[key], 3);
      if (value !== null) payload[key] = value;
    }
    const done = { overall, text, figures, posted: null };
    fetch(config.report, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(payload), credentials: "omit" })
      .then((r) => { done.posted = r.status; })
      .catch(() => { done.posted = 0; })
      .finally(() => { window.mcsNetworkCheck = done; });
    return done;
  }

  // "Hear yourself": the microphone through the echo until hang-up.
  let talking = null;
  async function talk() {
    $("talk").disabled = true;
    $("start").disabled = true;
    const status = $("talk-status");
    const sip = new SipSocket(WS_URL);
    let stream = null;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      await sip.open();
      const result = await echoCall(sip, stream.getAudioTracks()[0], {
        bitrate: 0,
        seconds: 0,
        play: (remote) => { $("echo-audio").srcObject = remote; },
      });
      talking = { sip, stream, call: result.call, keeper: null };
      const onRequest = (msg) => { if (msg.method === "BYE") stopTalking("the echo service ended the call"); };
      sip.onRequest = onRequest;
      // Survive a network change (reconnect.js): new WebSocket, then an ICE restart of the call.
      const t = talking;
      window.mcsTalk = { states: [], recovered: 0, pc: t.call.pc };
      const keeper = new McsReconnect.Keeper({
        connected: () => t.sip.open_,
        reconnect: async () => {
          const next = new SipSocket(WS_URL);
          await next.open();
          next.onRequest = onRequest;
          next.onClose = () => keeper.transportLost();
          t.sip = next;
          t.call.sip = next;
        },
        register: async () => {}, // the echo needs no registration
        sessions: () => (talking === t ? [t.call] : []),
        renegotiate: (call) => call.reoffer(),
      }, {
        onState: (state, detail) => {
          window.mcsTalk.states.push(state);
          if (state === "lost") status.textContent = "Connection lost: reconnecting...";
          else if (state === "recovered") { window.mcsTalk.recovered += 1; status.textContent = `Reconnected in ${detail.ms} ms: speak and you should hear yourself.`; }
          else if (state === "gave-up") stopTalking("the connection could not be restored");
        },
      });
      t.keeper = keeper;
      sip.onClose = () => keeper.transportLost();
      keeper.watch(t.call.pc, t.call);
      status.textContent = "Connected: speak and you should hear yourself.";
      $("hangup").hidden = false;
    } catch (e) {
      status.textContent = `Could not start: ${e.message}`;
      if (stream) stream.getTracks().forEach((t) => t.stop());
      sip.close();
      $("talk").disabled = false;
      $("start").disabled = false;
    }
  }
  async function stopTalking(why) {
    const t = talking;
    talking = null;
    if (!t) return;
    if (t.keeper) t.keeper.stop();
    await t.call.hangup();
    t.call.pc.close();
    t.stream.getTracks().forEach((track) => track.stop());
    t.sip.close();
    $("hangup").hidden = true;
    $("talk").disabled = false;
    $("start").disabled = false;
    $("talk-status").textContent = why || "Call ended.";
  }

  $("domain").textContent = DOMAIN;
  drawSteps();
  $("start").addEventListener("click", () => { runCheck().catch((e) => { $("talk-status").textContent = `Check failed: ${e.message}`; $("start").disabled = false; }); });
  $("talk").addEventListener("click", talk);
  $("hangup").addEventListener("click", () => stopTalking());
  $("copy").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText($("report").value); $("copied").textContent = "copied"; } catch (e) { $("report").select(); document.execCommand("copy"); $("copied").textContent = "copied"; }
  });
  window.mcsNetworkCheckRun = runCheck;
})();
