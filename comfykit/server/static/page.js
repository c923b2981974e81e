"use strict";
// Everything here talks to this server only: /ws for progress and step previews, /generate, /interrupt, /view.
const $ = (id) => document.getElementById(id);
const clientId = Array.from(crypto.getRandomValues(new Uint8Array(16)), b => b.toString(16).padStart(2, "0")).join("");
let previewUrl = null;

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws?clientId=${clientId}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { $("status").textContent = "ready"; };
  ws.onclose = () => { $("status").textContent = "disconnected, retrying..."; setTimeout(connect, 2000); };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") {
      // Binary frame type 1 (legacy preview): 4 bytes event type, 4 bytes image format, then the JPEG.
      const view = new DataView(ev.data);
      if (view.getUint32(0) !== 1) return;
      const blob = new Blob([ev.data.slice(8)], { type: "image/jpeg" });
      if (previewUrl) URL.revokeObjectURL(previewUrl);
      previewUrl = URL.createObjectURL(blob);
      showPreview(previewUrl);
      return;
    }
    const msg = JSON.parse(ev.data);
    if (msg.type === "progress") {
      $("progress").max = msg.data.max;
      $("progress").value = msg.data.value;
      $("status").textContent = `step ${msg.data.value} / ${msg.data.max}`;
    } else if (msg.type === "executing" && msg.data.node) {
      $("status").textContent = `running node ${msg.data.node}`;
    } else if (msg.type === "status" && msg.data.status) {
      const n = msg.data.status.exec_info.queue_remaining;
      if (n === 0 && $("generate").disabled === false) $("status").textContent = "ready";
    }
  };
}

function showPreview(src) {
  // The image stays hidden until it has something to show: no broken-image icon before the first run.
  $("preview").src = src;
  $("preview").hidden = false;
  $("placeholder").hidden = true;
}

function addToGallery(src, title) {
  const img = document.createElement("img");
  img.src = src;
  img.title = title;
  img.className = "result";
  $("gallery").prepend(img);
}

async function generate() {
  $("error").textContent = "";
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("progress").value = 0;
  $("status").textContent = "queued";
  const body = {
    prompt: $("prompt").value, negative: $("negative").value,
    seed: parseInt($("seed").value, 10), steps: parseInt($("steps").value, 10),
    width: parseInt($("width").value, 10), height: parseInt($("height").value, 10), client_id: clientId,
    cfg: parseFloat($("cfg").value),
  };
  if ($("sampler").value) body.sampler_name = $("sampler").value;
  if ($("scheduler").value) body.scheduler = $("scheduler").value;
  if ($("ckpt").value) body.ckpt_name = $("ckpt").value;
  try {
    const res = await fetch("/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!res.ok) {
      const err = await res.json().catch(() => ({ error: res.statusText }));
      $("error").textContent = err.error || JSON.stringify(err);
      $("status").textContent = "failed";
      return;
    }
    const view = res.headers.get("X-Comfykit-View");
    addToGallery(view || URL.createObjectURL(await res.blob()), body.prompt);
    $("status").textContent = "done";
    $("progress").value = $("progress").max;
  } catch (e) {
    $("error").textContent = String(e);
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

async function loadSamplerChoices() {
  // The choices of this server's KSampler, with ComfyUI's defaults selected.
  const res = await fetch("/object_info/KSampler");
  if (!res.ok) return;
  const info = (await res.json()).KSampler;
  if (!info) return;
  const required = info.input.required;
  for (const [field, input, fallback] of [["sampler", "sampler_name", "euler"], ["scheduler", "scheduler", "normal"]]) {
    const spec = required[input];
    const choices = Array.isArray(spec[0]) ? spec[0] : ((spec[1] || {}).options || []);
    for (const name of choices) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = name;
      opt.selected = name === fallback;
      $(field).appendChild(opt);
    }
  }
}

async function loadCheckpoints() {
  const res = await fetch("/models/checkpoints");
  if (!res.ok) return;
  for (const name of await res.json()) {
    const opt = document.createElement("option");
    opt.value = opt.textContent = name;
    $("ckpt").appendChild(opt);
  }
}

$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => fetch("/interrupt", { method: "POST" }));
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
connect();
loadCheckpoints();
loadSamplerChoices();
