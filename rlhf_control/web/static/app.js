// Labelling page of rlhf-control: shows two clips side by side, looping in step, and stores the
// answer. Label convention: 1 = left (first) better, -1 = right (second) better, 0 = equal,
// null = can't tell. Two "slots" of two <video>s each: one is shown, the other preloads the next
// pair (claimed with exclude=<shown id>), so moving on after an answer has no wait.
"use strict";

(() => {
  const NAME_KEY = "rlhf-control.labeller";
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
    for (const v of vs) { v.pause(); v.currentTime = 0; }
    Promise.all(vs.map(whenReady)).then(() => {
      if (slot !== st.cur) return;
      for (const v of vs) { v.currentTime = 0; v.play().catch(() => {}); }
    });
  }
  for (const slot of slots) {
    for (const v of [slot.a, slot.b]) {
      v.muted = true;
      // When either clip ends, both start again, so they stay in step.
      v.addEventListener("ended", () => {
        const now = performance.now();
        if (slot !== st.cur || now - slot.lastRestart < 250) return;
        slot.lastRestart = now;
        st.loops += 1;
        playBoth(slot);
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
    $("qinfo").textContent = `pair #${slot.q.query_id}`;
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
  async function claim(exclude) {
    const qs = new URLSearchParams({ labeller: st.name });
    if (exclude.length) qs.set("exclude", exclude.join(","));
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
      const q = await claim([curId]);
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
    try {
      const r = await api("POST", "/api/answer",
        { query_id: q.query_id, label, labeller: st.name, seconds: watchedSeconds() });
      if (r.ok) {
        st.mine += 1;
        $("stat-mine").textContent = String(st.mine);
        toast(`✓ Saved pair #${q.query_id}: ${LABEL_TEXT[String(label)]}`);
        await advance();
      } else if ([404, 409, 410].includes(r.status)) {
        toast(`${errText(r)} (moving on)`, "warn");
        await advance();
      } else {
        toast(`Not saved: ${errText(r)}`, "error");
      }
    } catch (_) {
      toast("Not saved: the server cannot be reached; try again", "error");
    } finally {
      st.busy = false;
      document.body.classList.remove("busy");
      refreshStats();
    }
  }

  async function undo() {
    if (st.busy || !st.name) return;
    st.busy = true;
    press("btn-undo");
    try {
      const r = await api("POST", "/api/undo", { labeller: st.name });
      if (!r.ok) { toast(`Undo failed: ${errText(r)}`, "error"); return; }
      if (r.data.query_id === null) { toast("Nothing of yours to undo"); return; }
      st.mine = Math.max(0, st.mine - 1);
      $("stat-mine").textContent = String(st.mine);
      if (st.preloading) await st.preloading;
      const q = r.data.query;
      if (!q) { toast(`Undid pair #${r.data.query_id}, but its clips are gone`, "warn"); return; }
      // The preloaded pair goes back to the pool; the pair on screen becomes the next one.
      if (st.next) {
        api("POST", "/api/release", { query_id: st.next.q.query_id, labeller: st.name }).catch(() => {});
        unload(st.next);
        st.next = null;
      }
      const back = st.cur;
      const slot = back ? other(back) : slots[0];
      load(slot, q);
      show(slot);
      if (back) st.next = back;
      else preload();
      toast(`↶ Undone: answer pair #${q.query_id} again`);
    } catch (_) {
      toast("Undo failed: the server cannot be reached", "error");
    } finally {
      st.busy = false;
      refreshStats();
    }
  }

  // ---------------------------------------------------------------- stats, task, name
  async function refreshStats() {
    try {
      const r = await api("GET", "/api/stats");
      if (!r.ok) return;
      $("stat-answered").textContent = String(r.data.answered);
      $("stat-pending").textContent = String(r.data.pending);
      $("stat-rate").textContent = Number(r.data.answers_per_minute).toFixed(1);
    } catch (_) { /* next poll */ }
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
      if (s && s.q && st.name) api("POST", "/api/release", { query_id: s.q.query_id, labeller: st.name }).catch(() => {});
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
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    if ($("name-dialog").open) return;
    if (ev.key in KEYS) {
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
  // Leaving the page hands its held pairs back, so other labellers need not wait for the lease to end.
  window.addEventListener("pagehide", () => {
    for (const s of [st.cur, st.next]) {
      if (!s || !s.q || !st.name) continue;
      fetch("/api/release", {
        method: "POST", keepalive: true, credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ query_id: s.q.query_id, labeller: st.name }),
      }).catch(() => {});
    }
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      if (st.visibleSince !== null) st.watchedMs += performance.now() - st.visibleSince;
      st.visibleSince = null;
      if (st.cur) { st.cur.a.pause(); st.cur.b.pause(); }
    } else {
      st.visibleSince = performance.now();
      if (st.cur) playBoth(st.cur);
    }
  });

  // For tests and the curious: what is on screen.
  window.labelApp = {
    get current() { return st.cur ? st.cur.q.query_id : null; },
    get upcoming() { return st.next ? st.next.q.query_id : null; },
    get loops() { return st.loops; },
    get idle() { return !st.busy && !st.filling && !st.preloading; },
    get name() { return st.name; },
    videos() { return st.cur ? [st.cur.a, st.cur.b] : []; },
  };

  // ---------------------------------------------------------------- start
  $("who-name").textContent = st.name || "?";
  loadTask();
  refreshStats();
  setInterval(refreshStats, 4000);
  // New pairs arrive while the trainer runs: look for one when the screen is empty, and keep one preloaded.
  setInterval(() => {
    if (!st.name || st.busy) return;
    if (!st.cur) fillCurrent().then(preload);
    else if (!st.next) preload();
  }, 2500);
  if (!st.name) askName();
  else fillCurrent().then(preload);
})();
