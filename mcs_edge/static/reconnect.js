// mcs_edge reconnect helper: calls that survive a network change. Plain JavaScript, no build step.
//
// Served by the edge at /.well-known/mcs-edge/reconnect.js. Include it in a page that uses JsSIP:
//
//   <script src="https://edge.example.com/.well-known/mcs-edge/reconnect.js"></script>
//   const ua = new JsSIP.UA({ sockets: [socket], uri, password, register: true,
//                             instance_id: savedUuid });   // a stable +sip.instance (keep it in localStorage)
//   const keeper = McsReconnect.forJsSIP(ua, { onState: (state, detail) => console.log(state, detail) });
//   ua.start();
//
// What it does, with the edge keeping the call while the client is away (sip.flow_grace, 30 s):
//
// * WebSocket lost (Wi-Fi to 4G, VPN reconnect, laptop lid): reconnect with exponential backoff
//   (0.5 s doubling to 8 s, with jitter; at once when the browser reports it is online again),
//   register again (same +sip.instance and reg-id: the edge gives the new connection the calls of
//   the old one), then renegotiate every live session with an ICE restart. The edge answers that
//   re-INVITE itself and re-anchors the media; the PBX notices nothing.
// * ICE state "disconnected" (for 2 s) or "failed" while the WebSocket is up (a NAT rebinding, a
//   new local address): renegotiate that session with an ICE restart.
//
// JsSIP registers with reg-id and +sip.instance already; give it a stable instance_id so that a
// page reload can also be recognised. For another SIP stack, build a Keeper on an adapter (below):
//
//   const keeper = new McsReconnect.Keeper({
//     connected: () => bool,            // is the SIP WebSocket open?
//     reconnect: () => Promise,         // open a new WebSocket (reject on failure)
//     register: () => Promise,          // REGISTER again (resolve when registered; may be a no-op)
//     sessions: () => [session, ...],   // live calls
//     renegotiate: (session) => Promise // re-INVITE with an offer made with { iceRestart: true }
//   }, options);
//   keeper.transportLost();             // call when the WebSocket closed
//   keeper.watch(peerConnection, session);
"use strict";

(function (global) {
  const DEFAULTS = {
    minDelay: 500, // ms before the first reconnect attempt
    maxDelay: 8000, // ms between attempts at most
    factor: 2,
    jitter: 0.3, // +-30 % on each delay
    disconnectedFor: 2000, // ms of ICE "disconnected" before an ICE restart
    giveUpAfter: 60000, // ms without a connection before giving up (the edge's grace is shorter)
    onState: null, // (state, detail) => void: "lost", "reconnecting", "registered", "renegotiated", "recovered", "gave-up", "error"
  };

  class Keeper {
    constructor(adapter, options) {
      this.adapter = adapter;
      this.options = Object.assign({}, DEFAULTS, options || {});
      this.attempt = 0;
      this.timer = null;
      this.lostAt = null;
      this.recovering = false;
      this.stopped = false;
      this.iceTimers = new Map();
      this.onOnline = () => { if (this.lostAt !== null) this.schedule(0); };
      if (global.addEventListener) global.addEventListener("online", this.onOnline);
    }

    emit(state, detail) {
      const cb = this.options.onState;
      if (cb) { try { cb(state, detail); } catch (e) { /* the page's problem */ } }
    }

    delay() {
      const o = this.options;
      const base = Math.min(o.maxDelay, o.minDelay * Math.pow(o.factor, this.attempt));
      return Math.round(base * (1 + o.jitter * (2 * Math.random() - 1)));
    }

    // The SIP WebSocket closed: reconnect with backoff.
    transportLost() {
      if (this.stopped) return;
      if (this.lostAt === null) {
        this.lostAt = Date.now();
        this.attempt = 0;
        this.emit("lost", { sessions: this.adapter.sessions().length });
      }
      this.schedule(this.delay());
    }

    schedule(ms) {
      if (this.stopped) return;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.tryReconnect(), ms);
    }

    async tryReconnect() {
      if (this.stopped || this.recovering) return;
      if (Date.now() - this.lostAt > this.options.giveUpAfter) {
        this.emit("gave-up", {});
        return;
      }
      this.recovering = true;
      this.emit("reconnecting", { attempt: this.attempt + 1 });
      try {
        if (!this.adapter.connected()) await this.adapter.reconnect();
        await this.adapter.register();
        this.emit("registered", {});
        await this.renegotiateAll();
        const took = Date.now() - this.lostAt;
        this.lostAt = null;
        this.attempt = 0;
        this.emit("recovered", { ms: took });
      } catch (e) {
        this.attempt += 1;
        this.emit("error", { message: e && e.message ? e.message : String(e) });
        this.recovering = false;
        this.schedule(this.delay());
        return;
      }
      this.recovering = false;
    }

    // The transport is back (for stacks that reconnect by themselves, e.g. JsSIP): register and
    // renegotiate now.
    transportBack() {
      if (this.lostAt === null) this.lostAt = Date.now();
      clearTimeout(this.timer);
      this.tryReconnect();
    }

    async renegotiateAll() {
      for (const session of this.adapter.sessions()) {
        await this.renegotiate(session, "reconnected");
      }
    }

    async renegotiate(session, why) {
      try {
        await this.adapter.renegotiate(session);
        this.emit("renegotiated", { why });
      } catch (e) {
        this.emit("error", { message: `ICE restart failed: ${e && e.message ? e.message : e}` });
        throw e;
      }
    }

    // ICE "disconnected" for a while or "failed" while the WebSocket is up: ICE restart.
    watch(pc, session) {
      const check = () => {
        const state = pc.iceConnectionState;
        clearTimeout(this.iceTimers.get(pc));
        this.iceTimers.delete(pc);
        if (state === "closed") return;
        if (state !== "disconnected" && state !== "failed") return;
        const wait = state === "failed" ? 0 : this.options.disconnectedFor;
        this.iceTimers.set(pc, setTimeout(() => {
          this.iceTimers.delete(pc);
          const now = pc.iceConnectionState;
          if ((now === "disconnected" || now === "failed") && this.adapter.connected() && !this.recovering) {
            this.renegotiate(session, `ice ${now}`).catch(() => {});
          }
        }, wait));
      };
      pc.addEventListener("iceconnectionstatechange", check);
    }

    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      for (const t of this.iceTimers.values()) clearTimeout(t);
      this.iceTimers.clear();
      if (global.removeEventListener) global.removeEventListener("online", this.onOnline);
    }
  }

  // ---------------------------------------------------------------------------------- JsSIP
  // JsSIP keeps its sessions when the WebSocket drops and reconnects by itself
  // (connection_recovery_min_interval/max_interval in the UA configuration: 1 and 8 s are good
  // values); this adapter hurries it with the same backoff, registers again and restarts ICE.
  function forJsSIP(ua, options) {
    const sessions = new Set();
    const waitFor = (event, failEvents, ms) => new Promise((resolve, reject) => {
      const done = (fn, arg) => { clearTimeout(timer); ua.removeListener(event, ok); failEvents.forEach((f) => ua.removeListener(f, bad)); fn(arg); };
      const ok = (e) => done(resolve, e);
      const bad = (e) => done(reject, new Error(`${event} failed: ${(e && e.cause) || "error"}`));
      const timer = setTimeout(() => done(reject, new Error(`no ${event} in ${ms} ms`)), ms);
      ua.on(event, ok);
      failEvents.forEach((f) => ua.on(f, bad));
    });
    const adapter = {
      connected: () => ua.isConnected(),
      reconnect: () => {
        if (ua.isConnected()) return Promise.resolve();
        const transport = ua.transport || ua._transport;
        const pending = waitFor("connected", [], 5000);
        if (transport && typeof transport.connect === "function" && !(transport.isConnecting && transport.isConnecting())) {
          transport.connect();
        }
        return pending;
      },
      register: () => {
        const pending = waitFor("registered", ["registrationFailed"], 10000);
        ua.register();
        return pending;
      },
      sessions: () => Array.from(sessions).filter((s) => s.isEstablished()),
      renegotiate: (session) => new Promise((resolve, reject) => {
        const sent = session.renegotiate({ rtcOfferConstraints: { iceRestart: true } }, () => resolve());
        if (!sent) reject(new Error("the session cannot renegotiate now"));
        setTimeout(() => reject(new Error("no answer to the re-INVITE")), 10000);
      }),
    };
    const keeper = new Keeper(adapter, options);
    const track = (session) => {
      sessions.add(session);
      const forget = () => sessions.delete(session);
      session.on("ended", forget);
      session.on("failed", forget);
      if (session.connection) keeper.watch(session.connection, session);
      else session.on("peerconnection", (e) => keeper.watch(e.peerconnection, session));
    };
    ua.on("newRTCSession", (e) => track(e.session));
    ua.on("disconnected", () => { if (sessions.size) keeper.transportLost(); });
    ua.on("connected", () => { if (keeper.lostAt !== null) keeper.transportBack(); });
    return keeper;
  }

  global.McsReconnect = { Keeper, forJsSIP, DEFAULTS };
})(typeof window !== "undefined" ? window : globalThis);
