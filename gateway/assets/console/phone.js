// The browser phone: the microphone → 20 ms μ-law frames → hark's /media-stream, speaking
// Twilio's Media Streams protocol as Twilio does (connected, start, media, dtmf, mark echoes,
// stop), and the agent's audio played through the jitter buffer in worklet.js.
//
// Message shapes and key order follow Twilio's "WebSocket messages" page, as hark's own
// simulator writes them (engine/src/twilio/peer.rs `inbound`).

import { decodeSample, fromBase64, toBase64 } from "./g711.js";

const $ = (id) => document.getElementById(id);

/** What the test and the page read: the call's counters. */
const stats = {
  state: "idle",
  callSid: null,
  framesSent: 0,
  mediaIn: 0,
  mediaMs: 0,
  marksIn: 0,
  marksEchoed: 0,
  marksEchoedOnClear: 0,
  clears: 0,
  clearedMs: 0,
  playedMs: 0,
  bufferedMs: 0,
  underruns: 0,
  dtmf: "",
  errors: [],
};
window.harkPhone = { stats };

let call = null; // the live call: {ws, ctx, stream, capture, playback, seq, ...}

function hex(n) {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function log(text, cls) {
  const li = document.createElement("li");
  const t = new Date();
  li.textContent = `${t.toLocaleTimeString()}.${String(t.getMilliseconds()).padStart(3, "0")} ${text}`;
  if (cls) li.className = cls;
  const ol = $("log");
  ol.prepend(li);
  while (ol.children.length > 200) ol.lastChild.remove();
}

function setState(s) {
  stats.state = s;
  document.body.dataset.state = s;
  $("state").textContent = s;
  $("call").disabled = s !== "idle" && s !== "ended";
  $("hangup").disabled = s !== "in-call" && s !== "connecting";
}

function show() {
  $("frames-sent").textContent = stats.framesSent;
  $("media-ms").textContent = `${stats.mediaMs} ms`;
  $("played-ms").textContent = `${Math.round(stats.playedMs)} ms`;
  $("buffered-ms").textContent = `${Math.round(stats.bufferedMs)} ms`;
  $("marks-in").textContent = stats.marksIn;
  $("marks-echoed").textContent = stats.marksEchoed;
  $("clears").textContent = stats.clears;
  $("underruns").textContent = stats.underruns;
  $("dtmf").textContent = stats.dtmf || "—";
}

function params() {
  const out = {};
  for (const line of $("params").value.split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

function send(msg) {
  if (call && call.ws.readyState === WebSocket.OPEN) call.ws.send(JSON.stringify(msg));
}

function nextSeq() {
  call.seq += 1;
  return String(call.seq);
}

async function startCall() {
  setState("connecting");
  stats.errors = [];
  try {
    const r = await fetch("/console/ticket", { method: "POST", credentials: "same-origin" });
    if (!r.ok) throw new Error(`ticket: ${r.status} ${await r.text()}`);
    const ticket = await r.json();
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
    const ctx = new AudioContext({ latencyHint: "interactive" });
    await ctx.audioWorklet.addModule("/console/assets/worklet.js");
    const capture = new AudioWorkletNode(ctx, "hark-capture", { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
    const playback = new AudioWorkletNode(ctx, "hark-playback", { numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1] });
    ctx.createMediaStreamSource(stream).connect(capture);
    capture.connect(ctx.destination); // silent: keeps the capture node pulled
    playback.connect(ctx.destination);
    await ctx.resume();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/media-stream?${encodeURIComponent(ticket.param)}=${encodeURIComponent(ticket.ticket)}`;
    const ws = new WebSocket(url);
    call = {
      ws, ctx, stream, capture, playback,
      seq: 0, chunk: 0,
      streamSid: `MZ${hex(16)}`, callSid: `CA${hex(16)}`, accountSid: `AC${hex(16)}`,
      poll: null, ended: false,
    };
    stats.callSid = call.callSid;
    document.body.dataset.callSid = call.callSid;
    $("call-sid").textContent = call.callSid;
    ws.onopen = () => onOpen();
    ws.onmessage = (e) => onMessage(e.data);
    ws.onclose = (e) => endCall(`socket closed (${e.code}${e.reason ? " " + e.reason : ""})`);
    ws.onerror = () => log("socket error", "error");
    capture.port.onmessage = (e) => onFrame(e.data);
    playback.port.onmessage = (e) => onPlayback(e.data);
    log(`audio context at ${ctx.sampleRate} Hz; dialling ${scheme}://${location.host}/media-stream`);
  } catch (e) {
    stats.errors.push(String(e));
    log(`cannot call: ${e}`, "error");
    await teardown();
    setState("idle");
  }
}

function onOpen() {
  // Twilio: `connected` first, then `start` (sequenceNumber 1), then media from 2.
  send({ event: "connected", protocol: "Call", version: "1.0.0" });
  send({
    event: "start",
    sequenceNumber: nextSeq(),
    start: {
      accountSid: call.accountSid,
      streamSid: call.streamSid,
      callSid: call.callSid,
      tracks: ["inbound"],
      mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
      customParameters: params(),
    },
    streamSid: call.streamSid,
  });
  call.capture.port.postMessage("start");
  setState("in-call");
  log(`call ${call.callSid} started (stream ${call.streamSid})`);
  call.poll = setInterval(pollRecord, 1000);
}

function onFrame(frame) {
  if (!call || call.ended) return;
  call.chunk += 1;
  send({
    event: "media",
    sequenceNumber: nextSeq(),
    media: { track: "inbound", chunk: String(call.chunk), timestamp: String((call.chunk - 1) * 20), payload: toBase64(frame) },
    streamSid: call.streamSid,
  });
  stats.framesSent += 1;
  let sum = 0;
  for (let i = 0; i < frame.length; i++) {
    const v = decodeSample(frame[i]) / 32768;
    sum += v * v;
  }
  const db = 10 * Math.log10(sum / frame.length + 1e-10);
  $("level").style.width = `${Math.max(0, Math.min(100, (db + 60) * (100 / 60)))}%`;
  if (stats.framesSent % 10 === 0) show();
}

function onMessage(text) {
  let m;
  try {
    m = JSON.parse(text);
  } catch {
    log("server sent a message that is not JSON", "error");
    return;
  }
  switch (m.event) {
    case "media": {
      const bytes = fromBase64(m.media.payload);
      stats.mediaIn += 1;
      stats.mediaMs += bytes.length / 8;
      call.playback.port.postMessage({ media: bytes }, [bytes.buffer]);
      break;
    }
    case "mark":
      stats.marksIn += 1;
      call.playback.port.postMessage({ mark: m.mark.name });
      break;
    case "clear":
      stats.clears += 1;
      call.playback.port.postMessage({ clear: true });
      log("clear: the caller barged in; queued agent audio dropped", "barge-in");
      break;
    default:
      log(`unexpected message from the server: ${m.event}`, "error");
  }
}

function onPlayback(m) {
  if (m.echo !== undefined) {
    // Twilio echoes a mark once the audio before it has played (or at once on clear).
    stats.marksEchoed += 1;
    if (m.cleared) stats.marksEchoedOnClear += 1;
    send({ event: "mark", sequenceNumber: nextSeq(), streamSid: call.streamSid, mark: { name: m.echo } });
  } else if (m.cleared !== undefined) {
    stats.clearedMs += m.cleared;
    log(`clear dropped ${Math.round(m.cleared)} ms of agent audio, echoed ${m.marks} pending marks`, "barge-in");
  } else if (m.stats) {
    stats.playedMs = m.stats.played_ms;
    stats.bufferedMs = m.stats.buffered_ms;
    stats.underruns = m.stats.underruns;
    show();
  }
}

function sendDigit(digit) {
  if (!call || call.ended || stats.state !== "in-call") return;
  send({ event: "dtmf", streamSid: call.streamSid, sequenceNumber: nextSeq(), dtmf: { track: "inbound_track", digit } });
  stats.dtmf += digit;
  log(`DTMF ${digit}`);
  show();
}

function cell(v, unit = "") {
  return v === null || v === undefined ? "—" : `${v}${unit}`;
}

/** The turns the server has recorded so far (GET /console/calls/{sid}). */
async function pollRecord() {
  if (!stats.callSid) return;
  try {
    const r = await fetch(`/console/calls/${encodeURIComponent(stats.callSid)}`, { credentials: "same-origin" });
    if (!r.ok) return;
    const d = await r.json();
    const tbody = $("turns");
    tbody.replaceChildren();
    (d.turns || []).forEach((t, i) => {
      const tr = document.createElement("tr");
      if (t.interrupted) tr.className = "barge-in";
      for (const v of [
        i + 1,
        `${t.user_start_ms}–${t.user_end_ms} ms`,
        cell(t.text),
        cell(t.agent_text),
        cell(t.latency_ms, " ms"),
        cell(t.heard_latency_ms, " ms"),
        cell(t.heard_ms, " ms"),
        t.interrupted ? "barge-in" : "",
      ]) {
        const td = document.createElement("td");
        td.textContent = String(v);
        tr.append(td);
      }
      tbody.append(tr);
    });
    stats.recordTurns = (d.turns || []).length;
    const a = document.createElement("a");
    a.href = `/dashboard/calls/${encodeURIComponent(stats.callSid)}`;
    a.textContent = "this call on the dashboard";
    $("record-link").replaceChildren(a);
  } catch (e) {
    log(`cannot read the call record: ${e}`, "error");
  }
}

async function teardown() {
  if (!call) return;
  try {
    call.capture?.port.postMessage("stop");
    call.stream?.getTracks().forEach((t) => t.stop());
    await call.ctx?.close();
  } catch {
    // already closed
  }
}

async function endCall(why) {
  if (!call || call.ended) return;
  call.ended = true;
  clearInterval(call.poll);
  log(`call ended: ${why}`);
  await teardown();
  setState("ended");
  show();
  // The record's last turns and summary are written just after the stream ends.
  setTimeout(pollRecord, 500);
  setTimeout(pollRecord, 2000);
}

function hangUp() {
  if (!call || call.ended) return;
  send({ event: "stop", sequenceNumber: nextSeq(), stop: { accountSid: call.accountSid, callSid: call.callSid }, streamSid: call.streamSid });
  const ws = call.ws;
  endCall("hung up (stop sent)");
  setTimeout(() => ws.close(1000, "stop"), 100);
}

$("call").addEventListener("click", startCall);
$("hangup").addEventListener("click", hangUp);
for (const b of document.querySelectorAll("#keypad [data-digit]")) {
  b.addEventListener("click", () => sendDigit(b.dataset.digit));
}
setState("idle");

// The "through Twilio" mode, when the server is configured for it.
fetch("/console/config", { credentials: "same-origin" })
  .then((r) => (r.ok ? r.json() : null))
  .then(async (cfg) => {
    if (cfg && cfg.voice_sdk) {
      const { setup } = await import("./twilio-mode.js");
      await setup(log);
    }
  })
  .catch((e) => log(`cannot read the console settings: ${e}`, "error"));
