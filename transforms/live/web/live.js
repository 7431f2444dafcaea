"use strict";
// mediabeam live pages: the microphone to live-asr and the camera to live-video, over the job's
// WebSocket (protocol: docs/live.md). Plain JavaScript, no build step, nothing loaded from elsewhere.
// ?auto=1 starts at once and &seconds=N stops after N seconds (used by the browser test).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = { done: false, finals: [], latencies: [], finalLatencies: [], errors: [] };
window.mediabeamLive = state;

async function openSocket() {
  const config = await (await fetch("config.json")).json();
  const ws = new WebSocket(`ws://${location.hostname}:${config.ws_port}/`);
  ws.binaryType = "arraybuffer";
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error("cannot reach the live job's WebSocket endpoint"));
  });
  return ws;
}

function percentile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : NaN;
}

function showLatency(label, values) {
  const ms = (x) => `${Math.round(x)} ms`;
  $("latency").textContent = `${label}: last ${ms(values[values.length - 1])}, ` +
    `p50 ${ms(percentile(values, 0.5))}, p95 ${ms(percentile(values, 0.95))} (${values.length} events)` +
    (state.finalLatencies.length ? ` · final after its endpoint: p50 ${ms(percentile(state.finalLatencies, 0.5))}` : "");
}

function showError(text) {
  state.errors.push(text);
  $("errors").textContent += text + "\n";
}

function finish(why) {
  if (state.done) return;
  state.done = true;
  $("stop").disabled = true;
  $("status").textContent = why;
  document.title = "done";
}

// Send time of the piece holding audio second `t` of the stream (pieces: [end second, time]).
function sentTime(pieces, t) {
  const hit = pieces.find(([end]) => end >= t - 1e-6);
  return hit ? hit[1] : undefined;
}

async function startAsr() {
  $("start").disabled = true;
  // Everything else is ready before the microphone opens, so no captured audio is lost.
  const ctx = new AudioContext();
  await ctx.resume();
  await ctx.audioWorklet.addModule("mic-worklet.js");
  const ws = await openSocket();
  ws.send(JSON.stringify({ type: "start", stream_id: params.get("stream_id") || `browser-${Date.now()}`,
    format: "f32", sample_rate: ctx.sampleRate }));
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
  });
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "mic-capture");
  const mute = ctx.createGain();
  mute.gain.value = 0;
  source.connect(node).connect(mute).connect(ctx.destination);
  const pieces = [];
  let samples = 0;
  let ended = false;
  node.port.onmessage = (e) => {
    if (ended || ws.readyState !== WebSocket.OPEN) return;
    ws.send(e.data);
    samples += e.data.byteLength / 4;
    pieces.push([samples / ctx.sampleRate, performance.now()]);
  };
  let partial = "";
  ws.onmessage = (msg) => {
    const ev = JSON.parse(msg.data);
    if (ev.event === "ready") {
      $("status").textContent = `streaming ${ctx.sampleRate} Hz audio as ${ev.stream_id} (the job converts it to ${ev.model_rate} Hz)`;
    } else if (ev.event === "partial") {
      partial += ev.text;
      $("partial").textContent = partial;
      const at = sentTime(pieces, ev.audio_end_s);
      if (at !== undefined) {
        state.latencies.push(performance.now() - at);
        showLatency("partial latency", state.latencies);
      }
    } else if (ev.event === "final" && "utterance" in ev) {
      state.finals.push(ev.text);
      const at = sentTime(pieces, ev.end_s);
      if (at !== undefined) state.finalLatencies.push(performance.now() - at);
      partial = "";
      $("partial").textContent = "";
      const line = document.createElement("div");
      line.textContent = ev.text;
      $("finals").appendChild(line);
      $("transcript").textContent = state.finals.join(" ");
    } else if (ev.event === "final") {
      finish("stream finished");
    } else if (ev.event === "error") {
      showError(ev.reason);
    }
  };
  ws.onclose = () => finish("connection closed");
  const stop = () => {
    if (ended) return;
    ended = true;
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
    stream.getTracks().forEach((t) => t.stop());
    ctx.close();
    $("status").textContent = "ending the stream…";
  };
  $("stop").disabled = false;
  $("stop").onclick = stop;
  if (params.get("seconds")) setTimeout(stop, 1000 * Number(params.get("seconds")));
}

async function startVideo() {
  $("start").disabled = true;
  const fps = Number(params.get("fps") || 8);
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 } });
  const video = $("camera");
  video.srcObject = stream;
  await video.play();
  const canvas = document.createElement("canvas");
  const ws = await openSocket();
  ws.send(JSON.stringify({ type: "start", stream_id: params.get("stream_id") || `camera-${Date.now()}`,
    format: "jpeg" }));
  const sentAt = [];
  let ended = false;
  const timer = setInterval(() => {
    if (ended || ws.readyState !== WebSocket.OPEN || !video.videoWidth) return;
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob(async (blob) => {
      if (ended || ws.readyState !== WebSocket.OPEN) return;
      sentAt.push(performance.now());
      ws.send(await blob.arrayBuffer());
    }, "image/jpeg", 0.8);
  }, 1000 / fps);
  ws.onmessage = (msg) => {
    const ev = JSON.parse(msg.data);
    if (ev.event === "prediction") {
      state.finals.push(ev.top_classes);
      const rows = ev.top_classes.map((c, i) => `<tr><td>class ${c}</td><td>${ev.top_scores[i].toFixed(3)}</td></tr>`);
      $("classes").innerHTML = `<caption>frame ${ev.frame_index}</caption>` + rows.join("");
      if (sentAt[ev.frame_index] !== undefined) {
        state.latencies.push(performance.now() - sentAt[ev.frame_index]);
        showLatency("prediction latency", state.latencies);
      }
    } else if (ev.event === "final") {
      finish("stream finished");
    } else if (ev.event === "error") {
      showError(ev.reason);
    }
  };
  ws.onclose = () => finish("connection closed");
  const stop = () => {
    if (ended) return;
    ended = true;
    clearInterval(timer);
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
    stream.getTracks().forEach((t) => t.stop());
    $("status").textContent = "ending the stream…";
  };
  $("stop").disabled = false;
  $("stop").onclick = stop;
  if (params.get("seconds")) setTimeout(stop, 1000 * Number(params.get("seconds")));
}

function page(start) {
  const run = () => start().catch((err) => { showError(String(err)); finish("failed"); });
  $("start").onclick = run;
  if (params.get("auto")) run();
}
