// One websocket client for every live page (dashboard, incident, action, backup
// run, restore). It reconnects with capped, jittered backoff; pings so a dead
// socket (a proxy that dropped it, a laptop that slept) is noticed within
// PONG_WAIT; and re-syncs the page from the server after every (re)connect, so
// nothing that happened while the socket was down is missed.
//
//   PortalLive.connect({path: "/ws/live/...", root: el, onEvent: fn, onSync: fn?})
//
// The root element carries the state for people and tests:
//   data-live="connecting|connected|reconnecting|signed-out"
//   data-reconnects="N"   data-synced="<ms since epoch of the last re-sync>"
// Without onSync, a re-sync fetches the page itself and replaces every element
// marked data-sync (by id) with the server's current version; forms are never
// marked, so nothing a person is typing is lost.
(function () {
  "use strict";
  const PING_EVERY = 25000;
  const PONG_WAIT = 10000;
  const MAX_DELAY = 30000;

  function syncFromPage(root) {
    return fetch(location.href, {credentials: "same-origin", headers: {"X-Live-Sync": "1"}})
      .then(function (r) { return r.ok ? r.text() : Promise.reject(new Error(r.status)); })
      .then(function (html) {
        const fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-sync][id]").forEach(function (el) {
          const next = fresh.getElementById(el.id);
          if (next) el.replaceWith(document.importNode(next, true));
        });
      });
  }

  function connect(opts) {
    const root = opts.root;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    let ws = null, delay = 1000, opened = false, reconnects = 0;
    let pingTimer = null, pongTimer = null, retryTimer = null, syncTimer = null;

    function state(s) {
      root.dataset.live = s;
      if (opts.onState) opts.onState(s);
    }
    function sync() {
      const done = function () { root.dataset.synced = String(Date.now()); };
      const run = opts.onSync ? opts.onSync() : syncFromPage(root);
      Promise.resolve(run).then(done, function () { /* next event or reconnect retries */ });
    }
    function syncSoon() {
      // Many events in a burst cost one re-sync.
      clearTimeout(syncTimer);
      syncTimer = setTimeout(sync, 300);
    }
    function stopTimers() {
      clearInterval(pingTimer); clearTimeout(pongTimer);
    }
    function retry() {
      clearTimeout(retryTimer);
      const wait = delay / 2 + Math.random() * delay / 2;
      delay = Math.min(delay * 2, MAX_DELAY);
      retryTimer = setTimeout(open, wait);
    }
    function ping() {
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      ws.send(JSON.stringify({type: "ping"}));
      clearTimeout(pongTimer);
      pongTimer = setTimeout(function () { ws.close(); }, PONG_WAIT);
    }
    function open() {
      state(opened ? "reconnecting" : "connecting");
      ws = new WebSocket(scheme + location.host + opts.path);
      ws.onopen = function () {
        delay = 1000;
        if (opened) reconnects += 1;
        opened = true;
        root.dataset.reconnects = String(reconnects);
        state("connected");
        sync();
        stopTimers();
        pingTimer = setInterval(ping, PING_EVERY);
      };
      ws.onmessage = function (msg) {
        let data;
        try { data = JSON.parse(msg.data); } catch (e) { return; }
        if (data.type === "pong") { clearTimeout(pongTimer); return; }
        if (data.type === "event") opts.onEvent(data.event, syncSoon);
      };
      ws.onclose = function (e) {
        stopTimers();
        if (e.code === 4401) { state("signed-out"); return; }  // session ended: reload to sign in
        if (e.code === 4403 || e.code === 4404) { state("refused"); return; }
        state("reconnecting");
        retry();
      };
    }
    // Back online or back in front of the user: try now instead of waiting out the backoff.
    window.addEventListener("online", function () {
      if (!ws || ws.readyState === WebSocket.CLOSED) { delay = 1000; retry(); }
    });
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible" && ws && ws.readyState === WebSocket.OPEN) ping();
    });
    root.dataset.reconnects = "0";
    open();
    return {sync: sync, syncSoon: syncSoon};
  }

  window.PortalLive = {connect: connect, syncFromPage: syncFromPage};
})();
