// Labelling page of rlhf-control: shows two clips side by side, looping in step, and stores the
// answer. Label convention: 1 = left (first) better, -1 = right (second) better, 0 = equal,
// null = can't tell. Two "slots" of two <video>s each: one is shown, the other preloads the next
// pair (claimed with exclude=<shown id>&reserve=1, which the server grants only while another pair
// stays free for other labellers), so moving on after an answer has no wait. The page renews its
// holds with a heartbeat and gives them back when it is hidden or closed; an answer the server could
// not take stays in this page (localStorage) and is sent again until the server answers.
"use strict";

(() => {
  const NAME_KEY = "rlhf-control.labeller";
  const OUTBOX_KEY = "rlhf-control.outbox";
  const SPEED_KEY = "rlhf-control.speed";
  const SPEEDS = [0.5, 0.75, 1, 1.5, 2];
  const HEARTBEAT_MS = 5000;
  const clampSpeed = (x) => (SPEEDS.includes(Number(x)) ? Number(x) : 1);
  function loadOutbox() {
    try {
      const v = JSON.parse(localStorage.getItem(OUTBOX_KEY) || "[]");
      return Array.isArray(v) ? v.filter((e) => e && Number.isInteger(e.query_id)).slice(0, 500) : [];
    } catch (_) { return []; }
  }
  const $ = (id) => document.getElementById(id);
  const LABEL_TEXT = { "1": "left is better", "-1": "right is better", "0": "equally good", "null": "can't tell" };
  const BUTTON_OF = { "1": "btn-first", "-1": "btn-second", "0": "btn-equal", "null": "btn-skip" };
  const KEYS = {
    ArrowLeft: 1, "1": 1, ArrowRight: -1, "2": -1,
    ArrowUp: 0, "3": 0, e: 0, E: 0, ArrowDown: null, "4": null, s: null, S: null,
  };

  const slots = [...document.querySelectorAll(".slot")].map((el) => {
    const [a, b] = el.querySelectorAll("video");
    return { el, a, b, q: null, lastRestart: 0 };
  });
  const st = {
    name: (localStorage.getItem(NAME_KEY) || "").trim(),
    cur: null, // slot on screen
    next: null, // slot holding the preloaded pair
    busy: false,
    filling: false,
    preloading: null,
    mine: 0,
    loops: 0,
    watchedMs: 0,
    visibleSince: null,
    outbox: loadOutbox(), // answers the server could not take yet, each tagged with its run
    answered: [], // pairs this page's answers were stored for, oldest first: what undo may take back
    runId: null, // the run the server labels (from /api/stats)
    flushing: false,
    online: true,
    run: null,
    speed: clampSpeed(localStorage.getItem(SPEED_KEY)),
    paused: false,
    fps: 20,
  };

  // The token (if any) came as ?token=; the server has set a cookie, so drop it from the address bar.
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname);

  // ---------------------------------------------------------------- helpers
  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    let data = null;
    if (r.status !== 204) {
      try { data = await r.json(); } catch (_) { data = null; }
    }
    return { ok: r.ok, status: r.status, data };
  }
  const errText = (r) => (r.data && r.data.error) || `HTTP ${r.status}`;

  // Write a text or a class only when it changes: a live region re-announces every write, even of
  // the same words, and the stats are polled every 2 s.
  function setText(el, text) { if (el.textContent !== text) el.textContent = text; }
  function setClass(el, cls) { if (el.className !== cls) el.className = cls; }

  let toastTimer = 0;
  function toast(text, kind = "") {
    const t = $("toast");
    t.textContent = text;
    t.className = `toast show ${kind}`;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.className = "toast"; }, kind === "error" ? 4000 : 1600);
  }
  function press(id) {
    const b = $(id);
    b.classList.add("pressed");
    setTimeout(() => b.classList.remove("pressed"), 300);
  }
  function watchedSeconds() {
    let ms = st.watchedMs;
    if (st.visibleSince !== null) ms += performance.now() - st.visibleSince;
    return Math.round(ms) / 1000;
  }
  const other = (slot) => (slot === slots[0] ? slots[1] : slots[0]);

  // ---------------------------------------------------------------- video playback in step
  function whenReady(v) {
    if (v.readyState >= 3) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        v.removeEventListener("canplay", done);
        v.removeEventListener("error", done);
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(done, 5000);
      v.addEventListener("canplay", done);
      v.addEventListener("error", done);
    });
  }
  function playBoth(slot) {
    const vs = [slot.a, slot.b];
    for (const v of vs) { v.pause(); v.currentTime = 0; v.playbackRate = st.speed; }
    Promise.all(vs.map(whenReady)).then(() => {
      if (slot !== st.cur || st.paused) return;
      for (const v of vs) { v.currentTime = 0; v.playbackRate = st.speed; v.play().catch(() => {}); }
    });
    flashLoop();
  }
  function flashLoop() {
    const f = $("loop-flash");
    f.classList.add("on");
    setTimeout(() => f.classList.remove("on"), 400);
  }
  function setPaused(paused) {
    st.paused = paused;
    $("btn-pause").textContent = paused ? "▶ Play" : "⏸ Pause";
    if (!st.cur) return;
    for (const v of [st.cur.a, st.cur.b]) {
      if (paused) v.pause();
      else { v.playbackRate = st.speed; v.play().catch(() => {}); }
    }
  }
  function stepFrames(n) {
    if (!st.cur) return;
    setPaused(true);
    const vs = [st.cur.a, st.cur.b];
    const dur = Math.min(...vs.map((v) => v.duration || 0));
    const t = Math.min(Math.max(0, vs[0].currentTime + n / st.fps), Math.max(0, dur - 1e-3));
    for (const v of vs) v.currentTime = t;
  }
  function setSpeed(x) {
    st.speed = clampSpeed(x);
    localStorage.setItem(SPEED_KEY, String(st.speed));
    $("speed").value = String(st.speed);
    if (st.cur) for (const v of [st.cur.a, st.cur.b]) v.playbackRate = st.speed;
  }
  for (const slot of slots) {
    for (const v of [slot.a, slot.b]) {
      v.muted = true;
      // When either clip ends, both start again, so they stay in step.
      v.addEventListener("ended", () => {
        const now = performance.now();
        if (slot !== st.cur || st.paused || now - slot.lastRestart < 250) return;
        slot.lastRestart = now;
        st.loops += 1;
        playBoth(slot);
      });
      v.addEventListener("timeupdate", () => {
        if (slot !== st.cur || v !== slot.a || !v.duration) return;
        $("scrub-fill").style.width = `${Math.min(100, (100 * v.currentTime) / v.duration)}%`;
      });
      v.addEventListener("error", () => {
        if (slot === st.cur && v.getAttribute("src")) toast("A clip failed to load; answer 'can't tell' to skip it", "error");
      });
    }
  }
  function load(slot, q) {
    slot.q = q;
    slot.a.src = q.first;
    slot.b.src = q.second;
  }
  function unload(slot) {
    slot.q = null;
    for (const v of [slot.a, slot.b]) { v.pause(); v.removeAttribute("src"); v.load(); }
  }
  function show(slot) {
    for (const s of slots) {
      if (s !== slot) { s.el.classList.add("off"); s.a.pause(); s.b.pause(); }
    }
    slot.el.classList.remove("off");
    st.cur = slot;
    $("empty").hidden = true;
    const stepText = (s) => (Number.isInteger(s) && s >= 0 ? `agent step ${s.toLocaleString("en")}` : "pretraining");
    const from = Number.isInteger(slot.q.first_step)
      ? ` · clips from ${stepText(slot.q.first_step)} and ${stepText(slot.q.second_step)}`
      : "";
    $("qinfo").textContent = `pair #${slot.q.query_id}${from}`;
    if (Number(slot.q.fps) > 0) st.fps = Number(slot.q.fps);
    $("stage").dataset.queryId = String(slot.q.query_id);
    st.watchedMs = 0;
    st.visibleSince = document.hidden ? null : performance.now();
    playBoth(slot);
  }
  function showEmpty() {
    st.cur = null;
    for (const s of slots) { s.el.classList.add("off"); s.a.pause(); s.b.pause(); }
    $("empty").hidden = false;
    $("qinfo").textContent = "";
    delete $("stage").dataset.queryId;
  }

  // ---------------------------------------------------------------- claiming pairs
  async function claim(exclude, reserve = false) {
    const qs = new URLSearchParams({ labeller: st.name });
    if (exclude.length) qs.set("exclude", exclude.join(","));
    if (reserve) qs.set("reserve", "1");
    const r = await api("GET", `/api/next?${qs}`);
    if (r.status === 204) return null;
    if (!r.ok) throw new Error(errText(r));
    return r.data;
  }
  async function fillCurrent() {
    if (st.filling || st.cur || !st.name) return;
    st.filling = true;
    try {
      const q = await claim([]);
      if (!q) { showEmpty(); return; }
      const slot = st.next ? other(st.next) : slots[0];
      load(slot, q);
      show(slot);
    } catch (e) {
      toast(`Cannot get a pair: ${e.message}`, "error");
      showEmpty();
    } finally {
      st.filling = false;
    }
  }
  function preload() {
    if (st.preloading || !st.cur || st.next) return st.preloading;
    const curId = st.cur.q.query_id;
    st.preloading = (async () => {
      const q = await claim([curId], true);
      if (!q || !st.cur || st.cur.q.query_id !== curId || q.query_id === curId || st.next) return;
      const slot = other(st.cur);
      load(slot, q);
      st.next = slot;
    })().catch(() => {}).finally(() => { st.preloading = null; });
    return st.preloading;
  }
  async function advance() {
    if (st.preloading) await st.preloading;
    const old = st.cur;
    if (st.next) {
      const slot = st.next;
      st.next = null;
      show(slot);
      if (old && old !== slot) unload(old);
    } else {
      if (old) unload(old);
      st.cur = null;
      await fillCurrent();
    }
    preload();
  }

  // ---------------------------------------------------------------- answers
  async function answer(label) {
    if (st.busy || !st.cur || !st.name) return;
    st.busy = true;
    document.body.classList.add("busy");
    press(BUTTON_OF[String(label)]);
    const q = st.cur.q;
    // The answer belongs to the run that served this pair (should it have to be kept), which the page
    // may not have heard of otherwise: the server can go away before the first stats arrive.
    const run = q.run || st.runId;
    try {
      const r = await api("POST", "/api/answer",
        { query_id: q.query_id, label, labeller: st.name, seconds: watchedSeconds(), run });
      if (r.ok) {
        st.answered.push(q.query_id);
        st.mine += 1;
        $("stat-mine").textContent = String(st.mine);
        toast(`✓ Saved pair #${q.query_id}: ${LABEL_TEXT[String(label)]}`);
        await advance();
      } else if ([404, 409, 410].includes(r.status)) {
        toast(`${errText(r)} (moving on)`, "warn");
        await advance();
      } else if (r.status >= 500) {
        keep({ query_id: q.query_id, label, labeller: st.name, seconds: watchedSeconds(), run });
        await advance();
      } else {
        toast(`Not saved: ${errText(r)}`, "error");
      }
    } catch (_) {
      keep({ query_id: q.query_id, label, labeller: st.name, seconds: watchedSeconds(), run });
      setOnline(false);
      await advance();
    } finally {
      st.busy = false;
      document.body.classList.remove("busy");
      refreshStats();
    }
  }

  async function undo() {
    if (st.busy || !st.name) return;
    press("btn-undo");
    // Only this page's own stored answers, the last first: not one still kept here unsent (the server
    // would take back the one before it), nor one from another page or an earlier visit.
    if (st.outbox.length) {
      toast(`${st.outbox.length} answer(s) kept in this page are not sent yet: undo once they are`, "warn");
      return;
    }
    if (!st.answered.length) { toast("Nothing answered in this page to undo"); return; }
    st.busy = true;
    try {
      const mine = st.answered[st.answered.length - 1];
      const r = await api("POST", "/api/undo", { labeller: st.name, query_id: mine });
      if (r.status === 409) { st.answered = []; toast(`Not undone: ${errText(r)}`, "warn"); return; }
      if (!r.ok) { toast(`Undo failed: ${errText(r)}`, "error"); return; }
      if (r.data.query_id === null) { st.answered = []; toast("Nothing of yours to undo"); return; }
      st.answered.pop();
      st.mine = Math.max(0, st.mine - 1);
      $("stat-mine").textContent = String(st.mine);
      if (st.preloading) await st.preloading;
      const q = r.data.query;
      if (!q) { toast(`Undid pair #${r.data.query_id}, but its clips are gone`, "warn"); return; }
      // The preloaded pair goes back to the pool; the pair on screen becomes the next one.
      if (st.next) {
        api("POST", "/api/release", releaseBody(st.next)).catch(() => {});
        unload(st.next);
        st.next = null;
      }
      const back = st.cur;
      const slot = back ? other(back) : slots[0];
      load(slot, q);
      show(slot);
      if (back) st.next = back;
      else preload();
      if (r.data.trained) {  // the label is out of the data, but the weights have learned from it
        toast(`↶ Undone: answer pair #${q.query_id} again. The reward model had already trained on the `
          + "old answer; its next updates leave it out", "warn");
      } else toast(`↶ Undone: answer pair #${q.query_id} again`);
    } catch (_) {
      toast("Undo failed: the server cannot be reached", "error");
    } finally {
      st.busy = false;
      refreshStats();
    }
  }

  // ---------------------------------------------------------------- answers kept in the page
  function saveOutbox() {
    localStorage.setItem(OUTBOX_KEY, JSON.stringify(st.outbox));
    $("stat-unsent").textContent = String(st.outbox.length);
    $("unsent-box").hidden = st.outbox.length === 0;
  }
  function keep(entry) {
    st.outbox.push(entry);
    saveOutbox();
    st.mine += 1;
    $("stat-mine").textContent = String(st.mine);
    toast(`Pair #${entry.query_id} kept in this page: it is sent when the server answers again`, "warn");
  }
  async function flushOutbox() {
    if (st.flushing || !st.outbox.length) return;
    st.flushing = true;
    try {
      while (st.outbox.length) {
        const e = st.outbox[0];
        if (e.run !== st.runId) { // kept for another run (or by an older page): its pair numbers are not this run's
          st.outbox.shift();
          saveOutbox();
          toast(`Pair #${e.query_id} was answered for another run: not sent to this one`, "warn");
          continue;
        }
        let r;
        try { r = await api("POST", "/api/answer", e); } catch (_) { setOnline(false); return; }
        if (r.status >= 500) return; // the store is not there yet: keep it
        st.outbox.shift();
        saveOutbox();
        if (r.ok) toast(`✓ Sent pair #${e.query_id}, kept while the server was away`);
        else toast(`Pair #${e.query_id} was not stored: ${errText(r)}`, "warn");
      }
    } finally {
      st.flushing = false;
    }
  }

  // ---------------------------------------------------------------- leases: heartbeat, hide, close
  const heldSlots = () => [st.cur, st.next].filter((s) => s && s.q);
  // A release names the run of its pair: a server of another run (it took the port) gives back nothing.
  const releaseBody = (s) => ({ query_id: s.q.query_id, labeller: st.name, run: s.q.run });
  async function heartbeat() {
    const slots = heldSlots();
    const ids = slots.map((s) => s.q.query_id);
    if (!st.name || !ids.length || st.busy || document.hidden) return;
    // The run of the pairs on screen: a server of another run (it took the port) holds none of them,
    // so the page moves on to that run's pairs instead of taking its pairs of the same numbers.
    const run = slots[0].q.run || st.runId;
    let r;
    try { r = await api("POST", "/api/heartbeat", { labeller: st.name, query_ids: ids, run }); } catch (_) { return; }
    if (!r.ok || st.busy) return;
    const held = new Set(r.data.held);
    if (st.next && st.next.q && ids.includes(st.next.q.query_id) && !held.has(st.next.q.query_id)) {
      unload(st.next);
      st.next = null;
    }
    if (st.cur && st.cur.q && ids.includes(st.cur.q.query_id) && !held.has(st.cur.q.query_id)) {
      toast(`Pair #${st.cur.q.query_id} is no longer yours (answered, retired or taken); next pair`, "warn");
      await advance();
    }
  }
  function releaseAll() {
    for (const s of heldSlots()) {
      fetch("/api/release", {
        method: "POST", keepalive: true, credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(releaseBody(s)),
      }).catch(() => {});
    }
  }

  // ---------------------------------------------------------------- stats, run state, task, name
  const RUN_TEXT = {
    waiting: (r) => `The agent is waiting for your labels (it wants ${r.wanted ?? "more"} by now).`,
    pretraining: () => "The agent waits for the first labels (on clips of its untrained policy) before it starts.",
    finished: () => "The run has finished: thank you! Pairs still pending can be labelled later with 'rlhf-control label RUN_DIR'.",
    stopped: () => "The run is not training now: your labels are stored and learned when it is resumed (train --resume).",
  };
  function setOnline(online) {
    st.online = online;
    showBanner();
  }
  function showBanner() {
    const b = $("banner");
    let text = "";
    let kind = "";
    if (!st.online) {
      kind = "offline";
      const ended = st.run && st.run.state === "finished";
      text = (ended ? `${RUN_TEXT.finished()} The labelling server has stopped.`
        : "Cannot reach the labelling server (the run may have ended or be restarting).")
        + (st.outbox.length ? ` ${st.outbox.length} answer(s) are kept in this page and sent when it is back.` : "");
    } else if (st.run && RUN_TEXT[st.run.state]) {
      kind = st.run.state;
      text = RUN_TEXT[st.run.state](st.run);
    }
    if (b.hidden !== !text) b.hidden = !text;
    setText(b, text);
    setClass(b, `banner ${kind}`);
    document.body.dataset.run = st.online ? (st.run ? st.run.state : "") : "offline";
  }
  async function refreshStats() {
    let r;
    try {
      r = await api("GET", `/api/stats${st.name ? `?labeller=${encodeURIComponent(st.name)}` : ""}`);
    } catch (_) {
      setOnline(false);
      return;
    }
    if (!r.ok) return;
    const d = r.data;
    st.run = d.run || null;
    st.runId = d.run_id || null;
    setOnline(true);
    flushOutbox();
    setText($("stat-labels"), d.budget ? `${d.labels} of ${d.budget}` : String(d.labels));
    setText($("stat-answered"), String(d.answered));
    setText($("stat-pending"), String(d.pending));
    setText($("pending-split"), `pending: ${d.ready} ready · ${d.rendering} rendering · ${d.held_by_others} held by others`);
    setText($("stat-rate"), Number(d.answers_per_minute).toFixed(1));
  }
  async function refreshCurve() {
    let r;
    try { r = await api("GET", "/api/progress"); } catch (_) { return; }
    if (!r.ok || !r.data.rows.length) return;
    const rows = r.data.rows;
    const maxStep = Math.max(1, ...rows.map((x) => x[0]));
    const line = (values) => {
      const pts = rows.map((x, i) => [x[0], values[i]]).filter((p) => p[1] !== null);
      if (!pts.length) return "";
      const lo = Math.min(...pts.map((p) => p[1]));
      const hi = Math.max(...pts.map((p) => p[1]));
      return pts.map(([x, y]) => `${(160 * x / maxStep).toFixed(1)},${(38 - 36 * (hi > lo ? (y - lo) / (hi - lo) : 0.5)).toFixed(1)}`).join(" ");
    };
    $("curve-labels").setAttribute("points", line(rows.map((x) => x[1])));
    $("curve-return").setAttribute("points", line(rows.map((x) => x[2])));
  }
  async function loadTask() {
    try {
      const r = await api("GET", "/api/task");
      if (!r.ok) return;
      $("task-text").textContent = r.data.instructions;
      $("task-name").textContent = r.data.task ? `· ${r.data.task}` : "";
    } catch (_) { /* keep the old text */ }
  }
  $("task-edit").addEventListener("click", () => {
    $("task-input").value = $("task-text").textContent;
    $("task-form").hidden = false;
    $("task-edit").hidden = true;
    $("task-input").focus();
  });
  $("task-cancel").addEventListener("click", () => { $("task-form").hidden = true; $("task-edit").hidden = false; });
  $("task-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("PUT", "/api/task", { instructions: $("task-input").value });
    if (!r.ok) { toast(`Not saved: ${errText(r)}`, "error"); return; }
    $("task-text").textContent = r.data.instructions;
    $("task-form").hidden = true;
    $("task-edit").hidden = false;
    toast("Instructions saved");
  });

  function askName() {
    $("name-input").value = st.name;
    $("name-dialog").showModal();
  }
  $("who").addEventListener("click", askName);
  $("name-dialog").addEventListener("cancel", (ev) => { if (!st.name) ev.preventDefault(); });
  $("name-form").addEventListener("submit", async (ev) => {
    const name = $("name-input").value.trim();
    if (!name) { ev.preventDefault(); return; }
    if (name === st.name) return;
    // Give back what the old name holds, then start again under the new one.
    for (const s of [st.cur, st.next]) {
      if (s && s.q && st.name) api("POST", "/api/release", releaseBody(s)).catch(() => {});
      if (s) unload(s);
    }
    st.cur = null;
    st.next = null;
    st.mine = 0;
    $("stat-mine").textContent = "0";
    st.name = name;
    localStorage.setItem(NAME_KEY, name);
    $("who-name").textContent = name;
    await fillCurrent();
    preload();
  });

  // ---------------------------------------------------------------- input
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable)) return;
    if ($("name-dialog").open) return;
    if (ev.key === " " || ev.key === "p" || ev.key === "P") {
      ev.preventDefault();
      if (!ev.repeat) setPaused(!st.paused);
    } else if (ev.key === "," || ev.key === ".") {
      ev.preventDefault();
      stepFrames(ev.key === "," ? -1 : 1);
    } else if (ev.key in KEYS) {
      ev.preventDefault();
      if (!ev.repeat) answer(KEYS[ev.key]);
    } else if (ev.key === "u" || ev.key === "U" || ev.key === "Backspace") {
      ev.preventDefault();
      if (!ev.repeat) undo();
    }
  });
  for (const b of document.querySelectorAll(".answer")) {
    b.addEventListener("click", (ev) => {
      // After a mouse click, drop focus so that Space/Enter cannot answer the next pair by accident.
      if (ev.detail > 0) b.blur();
      answer(b.dataset.label === "skip" ? null : Number(b.dataset.label));
    });
  }
  $("btn-undo").addEventListener("click", (ev) => { if (ev.detail > 0) $("btn-undo").blur(); undo(); });
  $("btn-pause").addEventListener("click", (ev) => { if (ev.detail > 0) $("btn-pause").blur(); setPaused(!st.paused); });
  $("btn-back").addEventListener("click", (ev) => { if (ev.detail > 0) $("btn-back").blur(); stepFrames(-1); });
  $("btn-fwd").addEventListener("click", (ev) => { if (ev.detail > 0) $("btn-fwd").blur(); stepFrames(1); });
  $("speed").addEventListener("change", () => { setSpeed($("speed").value); $("speed").blur(); });
  // Leaving or hiding the page hands its held pairs back, so other labellers need not wait for the
  // lease to end; coming back takes them again if nobody else has (the heartbeat).
  window.addEventListener("pagehide", () => { if (st.name) releaseAll(); });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      if (st.visibleSince !== null) st.watchedMs += performance.now() - st.visibleSince;
      st.visibleSince = null;
      if (st.cur) { st.cur.a.pause(); st.cur.b.pause(); }
      if (st.name) releaseAll();
    } else {
      st.visibleSince = performance.now();
      if (st.cur) playBoth(st.cur);
      heartbeat();
    }
  });

  // For tests and the curious: what is on screen.
  window.labelApp = {
    get current() { return st.cur ? st.cur.q.query_id : null; },
    get currentRun() { return st.cur ? st.cur.q.run : null; },
    get upcoming() { return st.next ? st.next.q.query_id : null; },
    get loops() { return st.loops; },
    get idle() { return !st.busy && !st.filling && !st.preloading; },
    get name() { return st.name; },
    get outbox() { return st.outbox.map((e) => e.query_id); },
    get runId() { return st.runId; },
    get mine() { return st.mine; },
    get run() { return st.run; },
    get online() { return st.online; },
    get paused() { return st.paused; },
    get speed() { return st.speed; },
    videos() { return st.cur ? [st.cur.a, st.cur.b] : []; },
  };

  // ---------------------------------------------------------------- start
  $("who-name").textContent = st.name || "?";
  loadTask();
  setSpeed(st.speed);
  saveOutbox();
  refreshStats();
  setInterval(refreshStats, 2000);
  setInterval(heartbeat, HEARTBEAT_MS);
  refreshCurve();
  setInterval(refreshCurve, 10000);
  // New pairs arrive while the trainer runs: look for one when the screen is empty, and keep one preloaded.
  let polls = 0;
  setInterval(() => {
    if (!st.name || st.busy) return;
    polls += 1;
    // an empty screen looks four times a second (once a second while the server is unreachable)
    if (!st.cur && (st.online || polls % 4 === 0)) fillCurrent().then(preload);
    else if (!st.next && polls % 12 === 0) preload(); // a preload every 3 s
  }, 250);
  if (!st.name) askName();
  else fillCurrent().then(preload);
})();
