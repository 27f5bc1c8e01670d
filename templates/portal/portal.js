// The portal's one script, served by rehearse itself (/static/portal.js): the form
// asks the API with the user's CSRF token; a run page follows its run's events; a kept
// dry run's owner reveals its secrets, extends and destroys it, its expiry counting down.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf"]').content;

  async function post(path, body) {
    const res = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Rehearse-CSRF": csrf },
      body: JSON.stringify(body || {}),
    });
    const answer = await res.json().catch(() => ({}));
    return { status: res.status, answer: answer };
  }

  const form = document.getElementById("rehearse");
  if (form) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const error = document.getElementById("form-error");
      error.textContent = "";
      const kind = ev.submitter ? ev.submitter.value : "rehearse";
      const release = form.release.value.trim();
      let path = "/api/v1/rehearsals";
      let body = { environment: form.environment.value, release: release };
      if (kind === "dry_run") {
        path = "/api/v1/dry-runs";
        body.ttl = form.ttl.value.trim();
      } else if (kind === "compare") {
        path = "/api/v1/comparisons";
        body = { environment: form.environment.value, baseline: form.baseline.value.trim(), candidate: release };
      }
      const { status, answer } = await post(path, body);
      if (status === 202) {
        window.location.assign("/requests/" + encodeURIComponent(answer.id));
      } else {
        error.textContent = answer.error || "refused (" + status + ")";
      }
    });
  }

  const run = document.getElementById("run");
  if (!run) return;
  const id = run.dataset.request;
  const api = "/api/v1/requests/" + encodeURIComponent(id);
  const log = document.getElementById("log");
  const state = document.getElementById("state");

  // Follows the run's events from the stream's first line, skipping what the page shows.
  function follow() {
    const seen = log.children.length;
    let n = 0;
    const events = new EventSource(api + "/events");
    events.onmessage = (m) => {
      n += 1;
      if (n <= seen) return;
      const li = document.createElement("li");
      li.textContent = m.data;
      log.appendChild(li);
      log.scrollTop = log.scrollHeight;
    };
    events.addEventListener("end", async () => {
      events.close();
      const res = await fetch(api);
      const r = await res.json();
      const s = r.state;
      if (s.state === "kept") {
        // Built and kept: the page shows its owner the endpoints and buttons.
        window.location.reload();
        return;
      }
      const verdict = s.verdict || "error";
      state.textContent = verdict + " (exit " + s.exit_code + ")";
      state.className = verdict;
      run.dataset.state = "finished";
      if (s.error) document.getElementById("error").textContent = s.error;
      if (s.comparison) {
        document.getElementById("compare").href = "/compares/" + encodeURIComponent(s.comparison) + "/compare.html";
        document.getElementById("compare-links").hidden = false;
      }
      if (s.run_id) {
        document.getElementById("report").href = "/runs/" + encodeURIComponent(s.run_id) + "/report.html";
        document.getElementById("links").hidden = false;
      }
      const kept = document.getElementById("kept");
      if (kept) kept.remove();
    });
  }

  // The current step's log tail, while the run is open (and once more at its end).
  async function tail() {
    const res = await fetch(api + "/log");
    if (!res.ok) return;
    const t = await res.json();
    document.getElementById("tail-file").textContent = t.file || "";
    document.getElementById("tail").textContent = (t.lines || []).join("\n");
  }
  tail();
  const tailing = setInterval(() => {
    tail();
    if (run.dataset.state !== "open") clearInterval(tailing);
  }, 2000);

  if (run.dataset.state === "open") {
    state.textContent = "running";
    follow();
  }

  const kept = document.getElementById("kept");
  if (!kept) return;
  const problem = document.getElementById("kept-error");
  const countdown = document.getElementById("countdown");
  function tick() {
    const left = Math.round((Date.parse(kept.dataset.expires) - Date.now()) / 1000);
    if (left <= 0) {
      countdown.textContent = "expired";
      return;
    }
    const h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
    countdown.textContent = "in " + (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
  }
  tick();
  setInterval(tick, 1000);

  document.getElementById("reveal").addEventListener("click", async () => {
    problem.textContent = "";
    const { status, answer } = await post(api + "/reveal");
    if (status !== 200) {
      problem.textContent = answer.error || "refused (" + status + ")";
      return;
    }
    const dl = document.getElementById("secrets");
    dl.replaceChildren();
    for (const [name, db] of Object.entries(answer.databases || {})) {
      for (const [k, v] of [["password", db.password], ["url", db.url]]) {
        const dt = document.createElement("dt");
        dt.textContent = name + " " + k;
        const dd = document.createElement("dd");
        dd.textContent = v;
        dd.className = "secret-" + k;
        dl.append(dt, dd);
      }
    }
    dl.hidden = false;
  });

  document.getElementById("extend").addEventListener("click", async () => {
    problem.textContent = "";
    const by = document.getElementById("extend-by").value;
    const { status, answer } = await post(api + "/extend", { by: by });
    if (status !== 200) {
      problem.textContent = answer.error || "refused (" + status + ")";
      return;
    }
    kept.dataset.expires = answer.expires_at;
    const at = document.getElementById("expires-at");
    at.dateTime = answer.expires_at;
    at.textContent = answer.expires_at.replace("T", " ").replace("Z", " UTC");
    tick();
  });

  document.getElementById("destroy").addEventListener("click", async () => {
    problem.textContent = "";
    const { status, answer } = await post(api + "/destroy");
    if (status !== 202) {
      problem.textContent = answer.error || "refused (" + status + ")";
      return;
    }
    for (const b of kept.querySelectorAll("button")) b.disabled = true;
    state.textContent = "being destroyed";
    follow();
  });
})();
