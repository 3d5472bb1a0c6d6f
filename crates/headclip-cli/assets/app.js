// The headclip serve page: sends each dropped or chosen image to POST /v1/detect (one request
// per image, a few at a time; the server batches them), shows the score and the overlay, and
// re-judges every image against the threshold slider without asking the server again.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const results = $("results");
  const slider = $("threshold");
  const sliderValue = $("threshold-value");
  const summary = $("summary");
  const tokenRow = $("token-row");
  const tokenInput = $("token");
  const template = $("card-template");
  const PARALLEL = 3;
  const MAX_RETRIES = 3;
  const queue = [];
  let running = 0;
  let authRequired = false;
  // The calibration's image threshold, when the server has one; the slider starts there.
  let calibrated = null;
  let digits = 2;

  function threshold() {
    return Number(slider.value);
  }

  function fmt(x, digits) {
    return typeof x === "number" && isFinite(x) ? x.toFixed(digits === undefined ? 3 : digits) : "–";
  }

  // ---- server information ----
  fetch("/healthz")
    .then((r) => r.json())
    .then((h) => {
      $("model-info").textContent =
        `${h.model} · S = ${h.image_size} · ${h.mode === "learned" ? "learned prompts" : "training-free"} · ${h.device}`;
      if (h.calibration) {
        calibrated = h.calibration.image_threshold;
        // A calibrated threshold is kept exactly, not snapped to the slider's steps.
        slider.step = "any";
        digits = 3;
        const how = h.calibration.method.kind === "quantile"
          ? `quantile ${h.calibration.method.quantile} of normal images`
          : "F1-max on labelled images";
        $("calibration-text").textContent =
          `Calibrated threshold ${fmt(calibrated)} (${how}, ${h.calibration.images} images)`;
        $("calibration").hidden = false;
      }
      slider.value = String(h.threshold);
      authRequired = !!h.auth_required;
      tokenRow.hidden = !authRequired;
      tokenInput.value = sessionStorage.getItem("headclip-token") || "";
      rejudge();
    })
    .catch(() => {
      $("model-info").textContent = "server unreachable";
    });
  tokenInput.addEventListener("change", () => sessionStorage.setItem("headclip-token", tokenInput.value));

  // ---- threshold ----
  function rejudge() {
    const t = threshold();
    sliderValue.textContent = t.toFixed(digits);
    $("calibration-reset").disabled = calibrated === null || t === calibrated;
    let done = 0;
    let anomalous = 0;
    for (const card of results.querySelectorAll(".card[data-state=done]")) {
      const score = Number(card.dataset.score);
      const bad = score >= t;
      done += 1;
      if (bad) anomalous += 1;
      card.classList.toggle("anomalous", bad);
      card.classList.toggle("normal", !bad);
      card.querySelector(".verdict").textContent = bad ? "anomalous" : "normal";
      card.querySelector(".mark").style.left = `${(t * 100).toFixed(1)}%`;
    }
    const pending = results.querySelectorAll(".card[data-state=pending]").length;
    const failed = results.querySelectorAll(".card[data-state=error]").length;
    const parts = [];
    if (done) parts.push(`${anomalous} of ${done} anomalous at ${t.toFixed(digits)}`);
    if (pending) parts.push(`${pending} scoring`);
    if (failed) parts.push(`${failed} failed`);
    summary.textContent = parts.length ? parts.join(" · ") : "No images yet.";
  }
  slider.addEventListener("input", rejudge);
  $("calibration-reset").addEventListener("click", () => {
    slider.value = String(calibrated);
    rejudge();
  });

  // ---- files in ----
  function addFiles(files) {
    for (const file of files) {
      const card = template.content.firstElementChild.cloneNode(true);
      card.querySelector(".name").textContent = file.name || "image";
      card.querySelector(".name").title = file.name || "";
      results.prepend(card);
      queue.push({ file, card, tries: 0 });
    }
    rejudge();
    pump();
  }

  $("file-input").addEventListener("change", (e) => {
    addFiles(Array.from(e.target.files || []));
    e.target.value = "";
  });

  const drop = $("drop");
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      $("file-input").click();
    }
  });
  let dragDepth = 0;
  document.addEventListener("dragenter", (e) => {
    e.preventDefault();
    dragDepth += 1;
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) drop.classList.remove("over");
  });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    dragDepth = 0;
    drop.classList.remove("over");
    const files = Array.from((e.dataTransfer && e.dataTransfer.files) || []);
    if (files.length) addFiles(files);
  });

  $("clear").addEventListener("click", () => {
    queue.length = 0;
    results.replaceChildren();
    rejudge();
  });

  // ---- requests ----
  function pump() {
    while (running < PARALLEL && queue.length) {
      const item = queue.shift();
      running += 1;
      send(item).finally(() => {
        running -= 1;
        pump();
      });
    }
  }

  async function send(item) {
    const headers = { "Content-Type": "application/octet-stream" };
    if (authRequired && tokenInput.value) headers.Authorization = `Bearer ${tokenInput.value}`;
    let response;
    let body;
    try {
      response = await fetch("/v1/detect?overlay=inline", { method: "POST", headers, body: item.file });
      body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    } catch (err) {
      return fail(item.card, `network error: ${err.message || err}`);
    }
    if (response.status === 503 && item.tries < MAX_RETRIES) {
      item.tries += 1;
      const wait = Number(response.headers.get("Retry-After")) || 1;
      item.card.querySelector(".spinner").textContent = `server busy, retrying in ${wait} s…`;
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      queue.unshift(item);
      return;
    }
    if (!response.ok) {
      return fail(item.card, `${response.status}: ${body.error || "request failed"}`);
    }
    show(item.card, body);
  }

  function fail(card, message) {
    card.dataset.state = "error";
    card.classList.add("failed");
    card.querySelector(".spinner").textContent = "failed";
    card.querySelector(".error").textContent = message;
    rejudge();
  }

  function show(card, r) {
    const img = card.querySelector("img.overlay");
    img.alt = `anomaly map over ${card.querySelector(".name").textContent}`;
    img.addEventListener("load", () => card.classList.add("loaded"), { once: true });
    if (r.overlay_png_base64) img.src = `data:image/png;base64,${r.overlay_png_base64}`;
    card.dataset.score = String(r.score);
    card.querySelector(".score").textContent = fmt(r.score);
    card.querySelector(".fill").style.width = `${(Math.min(1, Math.max(0, r.score)) * 100).toFixed(1)}%`;
    const details = card.querySelector(".details");
    const rows = [
      ["global", fmt(r.global_score)],
      ["pixel", fmt(r.pixel_score)],
      ["map max", fmt(r.map_max)],
      ["size", `${r.width}×${r.height} ${r.format || ""}`],
      ["time", `${fmt(r.elapsed_ms, 0)} ms (batch of ${r.batch_size})`],
    ];
    details.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      details.append(dt, dd);
    }
    card.dataset.state = "done";
    rejudge();
  }
})();
