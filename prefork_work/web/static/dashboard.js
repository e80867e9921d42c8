// prefork-work dashboard: every button calls the JSON API (POST or DELETE), then reloads.
// Messages are set with textContent, never innerHTML: nothing from the server is parsed as HTML.
"use strict";

const TOKEN_KEY = "prefork-work-token";

function flash(message, kind) {
  const box = document.getElementById("flash");
  box.textContent = message;
  box.className = kind || "error";
  box.hidden = false;
}

async function call(method, url, body) {
  for (let attempt = 0; attempt < 2; attempt++) {
    // the header tells the API this is the dashboard (same origin, or behind a proxy that
    // rewrites Host): another site's page could not send it without a CORS preflight
    const headers = {"Accept": "application/json", "X-Requested-With": "prefork-work"};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers["Authorization"] = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body)});
    if (response.status === 401 && attempt === 0) {
      const given = window.prompt("This change needs the web token:");
      if (!given) break;
      sessionStorage.setItem(TOKEN_KEY, given);
      continue;
    }
    let payload = {};
    try { payload = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) throw new Error(payload.error || ("HTTP " + response.status));
    return payload;
  }
  throw new Error("no token given");
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-url]");
  if (!button) return;
  event.preventDefault();
  if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
  button.disabled = true;
  try {
    await call(button.dataset.method, button.dataset.url);
    window.location.reload();
  } catch (err) {
    flash(err.message);
    button.disabled = false;
  }
});

document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form.cap");
  if (!form) return;
  event.preventDefault();
  const value = parseInt(form.elements["max_concurrency"].value, 10);
  try {
    await call("POST", form.dataset.url, {max_concurrency: isNaN(value) ? -1 : value});
    window.location.reload();
  } catch (err) {
    flash(err.message);
  }
});
