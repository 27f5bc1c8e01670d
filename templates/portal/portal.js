// The portal's one script, served by rehearse itself (/static/portal.js): the form
// asks the API with the user's CSRF token; a run page follows its run's events.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf"]').content;

  const form = document.getElementById("rehearse");
  if (form) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const error = document.getElementById("form-error");
      error.textContent = "";
      const body = { environment: form.environment.value, release: form.release.value.trim() };
      const res = await fetch("/api/v1/rehearsals", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Rehearse-CSRF": csrf },
        body: JSON.stringify(body),
      });
      const answer = await res.json().catch(() => ({}));
      if (res.status === 202) {
        window.location.assign("/requests/" + encodeURIComponent(answer.id));
      } else {
        error.textContent = answer.error || "refused (" + res.status + ")";
      }
    });
  }

  const run = document.getElementById("run");
  if (run && run.dataset.state !== "finished") {
    const id = run.dataset.request;
    const log = document.getElementById("log");
    const state = document.getElementById("state");
    const seen = log.children.length;
    let n = 0;
    const events = new EventSource("/api/v1/requests/" + encodeURIComponent(id) + "/events");
    state.textContent = "running";
    events.onmessage = (m) => {
      // The stream starts from the run's first line: skip what the page showed.
      n += 1;
      if (n <= seen) return;
      const li = document.createElement("li");
      li.textContent = m.data;
      log.appendChild(li);
      log.scrollTop = log.scrollHeight;
    };
    events.addEventListener("end", async () => {
      events.close();
      const res = await fetch("/api/v1/requests/" + encodeURIComponent(id));
      const r = await res.json();
      const s = r.state;
      const verdict = s.verdict || "error";
      state.textContent = verdict + " (exit " + s.exit_code + ")";
      state.className = verdict;
      run.dataset.state = "finished";
      if (s.error) document.getElementById("error").textContent = s.error;
      if (s.run_id) {
        document.getElementById("report").href = "/runs/" + encodeURIComponent(s.run_id) + "/report.html";
        document.getElementById("links").hidden = false;
      }
    });
  }
})();
