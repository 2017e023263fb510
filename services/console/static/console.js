// The console's script: progressive enhancement only (every page works without it).
// - The playground's Run streams the answer (server-sent events from .../playground/stream)
//   into the page instead of waiting for the whole answer.
"use strict";

(function () {
  const form = document.getElementById("playground");
  if (!form) return;
  let submitter = null;
  form.addEventListener("click", (event) => {
    const target = event.target;
    if (target instanceof HTMLButtonElement && target.type === "submit") submitter = target;
  });
  form.addEventListener("submit", (event) => {
    if (!submitter || submitter.value !== "run" || !window.fetch || !window.TextDecoder) return;
    event.preventDefault();
    run(form, submitter).catch((error) => showError({ message: String(error) }));
  });

  function $(id) { return document.getElementById(id); }

  function clearFieldErrors() {
    form.querySelectorAll(".field-error[data-live]").forEach((node) => node.remove());
    form.querySelectorAll("[aria-invalid='true']").forEach((node) => {
      node.removeAttribute("aria-invalid");
      node.removeAttribute("aria-describedby");
    });
  }

  function showError(failure) {
    const box = $("run-error");
    box.textContent = "";
    const line = document.createElement("p");
    const strong = document.createElement("strong");
    strong.textContent = failure.code || "ERROR";
    line.append(strong, (failure.reason ? " · " + failure.reason : "") + ": " + failure.message);
    box.append(line);
    const errors = failure.field_errors || {};
    const list = document.createElement("ul");
    for (const [name, messages] of Object.entries(errors)) {
      const item = document.createElement("li");
      const code = document.createElement("code");
      code.textContent = name;
      item.append(code, ": " + messages.join("; "));
      list.append(item);
      const inputId = name.startsWith("variables.") ? "var-" + name.slice(10) : name;
      const input = $(inputId);
      if (input) {
        const note = document.createElement("p");
        note.className = "field-error";
        note.dataset.live = "1";
        note.id = inputId + "-live-error";
        note.textContent = messages.join("; ");
        input.after(note);
        input.setAttribute("aria-invalid", "true");
        input.setAttribute("aria-describedby", note.id);
      }
    }
    if (list.children.length) box.append(list);
    box.hidden = false;
    $("answer").setAttribute("aria-busy", "false");
  }

  async function run(form, button) {
    const result = $("run-result");
    const answer = $("answer");
    clearFieldErrors();
    $("run-error").hidden = true;
    result.hidden = false;
    answer.textContent = "";
    answer.setAttribute("aria-busy", "true");
    document.querySelectorAll("#run-meta dd").forEach((dd) => { dd.textContent = ""; });
    const body = new URLSearchParams(new FormData(form));
    body.set("do", "run");
    button.disabled = true;
    try {
      const response = await fetch(form.dataset.stream, {
        method: "POST",
        body,
        credentials: "same-origin",
        headers: { "Accept": "text/event-stream" },
      });
      if (!response.ok || !response.body) {
        showError({ code: "HTTP " + response.status, message: response.statusText || "the run was refused" });
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const chunk = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = chunk.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) handle(JSON.parse(data));
        }
      }
    } finally {
      button.disabled = false;
      answer.setAttribute("aria-busy", "false");
    }
  }

  function setMeta(key, text) {
    const node = document.querySelector(`#run-meta dd[data-key="${key}"]`);
    if (node) node.textContent = text;
  }

  function handle(event) {
    if (event.event === "delta") {
      $("answer").append(event.text);
    } else if (event.event === "start") {
      setMeta("trace_id", event.trace_id);
    } else if (event.event === "final") {
      setMeta("model", `${event.model} (${event.backend})`);
      setMeta("finish_reason", event.finish_reason);
      setMeta("usage", `${event.input_tokens} in, ${event.output_tokens} out (${event.usage_source})`);
      setMeta("cost", event.cost);
      setMeta("first_token", event.first_token);
      setMeta("total", event.total);
      setMeta("trace_id", event.trace_id);
      const link = document.createElement("a");
      link.href = event.log_url;
      link.textContent = event.request_id;
      const node = document.querySelector('#run-meta dd[data-key="log"]');
      node.textContent = "";
      node.append(link);
    } else if (event.event === "error") {
      showError(event);
    }
  }
})();
