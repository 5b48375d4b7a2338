// The jobs board: live updates (server-sent "board" events: the board re-rendered and escaped by the
// server's own template) and the controls, as JSON POSTs (the dashboard refuses any other POST).
(function () {
  const board = document.getElementById("board");
  const post = async (path, body) => {
    const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error ? `${answer.error.message}${answer.error.hint ? ` (${answer.error.hint})` : ""}` : response.statusText);
    return answer;
  };
  const report = (text) => { document.getElementById("submitted").textContent = text; };

  board.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const job = button.dataset.job;
    try {
      if (button.dataset.action === "move") await post(`/api/jobs/${job}/move`, { before: Number(button.dataset.before) });
      else await post(`/api/jobs/${job}/${button.dataset.action}`);
      report(`job ${job}: ${button.dataset.action} done`);
    } catch (error) { report(`job ${job}: ${error.message}`); }
  });
  board.addEventListener("change", async (event) => {
    const select = event.target.closest("select[data-action=priority]");
    if (!select) return;
    try { await post(`/api/jobs/${select.dataset.job}/priority`, { level: select.value }); report(`job ${select.dataset.job}: priority ${select.value}`); }
    catch (error) { report(`job ${select.dataset.job}: ${error.message}`); }
  });
  // sparring data is specific to the checkpoint that made the mistakes: it defaults to high priority
  document.getElementById("kind").addEventListener("change", (event) => {
    document.getElementById("level").value = event.target.value === "spar" ? "high" : "normal";
  });
  document.getElementById("submit").addEventListener("submit", async () => {
    const value = (id) => document.getElementById(id).value.trim();
    const body = {
      expert: value("expert"), kind: value("kind"), priority: value("level"),
      options: value("options") ? value("options").split(/\s+/) : [],
      then: value("then") ? value("then").split(/[\s,]+/).filter(Boolean) : [],
    };
    try { const job = await post("/api/jobs", body); report(`submitted job ${job.id}`); }
    catch (error) { report(`not submitted: ${error.message}`); }
  });
  if (window.EventSource) {
    const stream = new EventSource("/api/stream/board");
    stream.addEventListener("board", (event) => {
      board.innerHTML = event.data;
      document.getElementById("live").textContent = "live updates: on";
    });
  }
})();
