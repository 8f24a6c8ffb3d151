// AVA's "talk to an assistant" page: plain ES module, no build step, nothing fetched from
// elsewhere. It calls POST /webrtc/offer (non-trickle), plays the assistant's audio track,
// shows the call's events from the data channel, reads past calls from the control API (their
// summary, cost and recording) and places outbound test calls (POST /call with variables).
// Test hooks: window.ava.stats (what the page measured) and data-testid attributes.
// Text from the server (tenant-provided names, summaries, transcripts) only ever goes in through
// textContent / option.textContent / title, never as HTML: a summary cannot script the page.

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem("ava.key") || "",
  token: hashParam("token"),
  tokenAssistant: hashParam("assistant"),
  config: null,
  call: null, // {pc, channel, mic, timers, ended}
  assistants: [], // the tenant's, for the outbound form
  audioCtx: null,
  turns: [],
};

const stats = {
  connected: false,
  callId: null,
  endedReason: null,
  botPeak: 0, // peak RMS of the assistant's audio, as played in the page (WebAudio)
  botVoicedMs: 0, // time the assistant's audio was above the speech threshold
  audioEnergy: 0, // getStats() inbound-rtp totalAudioEnergy
  samplesReceived: 0,
  turns: 0,
  transcripts: 0, // transcript events (interim and final) shown live
  partials: 0,
  outboundCallId: null, // the last call the outbound form placed
  errors: [],
};
window.ava = { stats };

class PageError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

function hashParam(name) {
  return new URLSearchParams(location.hash.slice(1)).get(name) || "";
}

// --- status and errors ------------------------------------------------------------------------

function setStatus(text, kind = "") {
  const pill = $("status");
  pill.textContent = text;
  pill.className = `pill ${kind}`;
}

function showError(message) {
  stats.errors.push(message);
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  setStatus("error", "bad");
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// --- the control API --------------------------------------------------------------------------

async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new PageError(
      "unreachable",
      `Cannot reach the AVA server at ${location.origin}. Is it running? (./scripts/dev)`,
    );
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const raw = data && data.message !== undefined ? data.message : response.statusText;
    const message = Array.isArray(raw) ? raw.join("; ") : String(raw);
    if (response.status === 401) {
      throw new PageError("auth", `The server refused the credentials: ${message}`);
    }
    throw new PageError("http", `The server answered ${response.status}: ${message}`);
  }
  return data;
}

// --- setup ------------------------------------------------------------------------------------

async function loadConfig() {
  const query = state.token ? `?token=${encodeURIComponent(state.token)}` : "";
  state.config = await api(`/webrtc/config${query}`);
}

async function loadAssistants() {
  const select = $("assistant");
  select.replaceChildren();
  const options = [];
  state.assistants = [];
  if (state.token) {
    options.push({ id: state.tokenAssistant, name: "assistant of the web token" });
  } else {
    if (state.key) {
      for (const a of await api("/assistant?limit=100")) {
        options.push({ id: a.id, name: a.name || a.id });
      }
    }
    state.assistants = options.slice();
    if (state.config.devMode && state.config.defaultAssistant) {
      const d = state.config.defaultAssistant;
      options.push({ id: d.id, name: `${d.name} (default, dev mode)` });
    }
  }
  for (const o of options) {
    const option = document.createElement("option");
    option.value = o.id;
    option.textContent = o.name;
    select.append(option);
  }
  $("call").disabled = options.length === 0;
  if (options.length === 0 && state.key) {
    showError("This tenant has no assistants yet: create one with POST /assistant.");
  }
}

function describeMode() {
  const mode = $("mode");
  if (state.token) mode.textContent = "Calling with a web token.";
  else if (state.key) mode.textContent = "Using an API key: your tenant's assistants and calls.";
  else if (state.config.devMode) {
    mode.textContent =
      "Dev mode: the default assistant needs no key. Calls made here are listed below.";
  } else mode.textContent = "Enter an API key to call your tenant's assistants.";
}

async function setup() {
  clearError();
  setStatus("loading…");
  try {
    await loadConfig();
    await loadAssistants();
    describeMode();
    if ($("error").hidden) setStatus($("call").disabled ? "enter an API key" : "ready");
  } catch (err) {
    $("call").disabled = true;
    showError(err.message);
    return;
  }
  refreshCalls();
  setupOutbound();
}

// --- a call -----------------------------------------------------------------------------------

function micError(err) {
  if (err.name === "NotAllowedError" || err.name === "SecurityError") {
    return (
      "Microphone access was denied. Allow the microphone for this site " +
      "(the icon in the address bar) and press Call again."
    );
  }
  if (err.name === "NotFoundError") return "No microphone was found on this device.";
  if (err.name === "NotReadableError") {
    return "The microphone is in use by another application or could not be opened.";
  }
  return `The microphone could not be opened: ${err.message || err.name}`;
}

function gatheringComplete(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms); // send what was gathered so far
  });
}

async function startCall() {
  clearError();
  resetLive();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("The microphone needs a secure page: open it over https:// or on localhost.");
    return;
  }
  $("call").disabled = true;
  setStatus("asking for the microphone…");
  state.audioCtx = state.audioCtx || new AudioContext();
  state.audioCtx.resume();
  let mic;
  try {
    mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
  } catch (err) {
    $("call").disabled = false;
    showError(micError(err));
    return;
  }
  const pc = new RTCPeerConnection({ iceServers: state.config.iceServers || [] });
  const call = { pc, mic, channel: null, timers: [], ended: false };
  state.call = call;
  for (const track of mic.getAudioTracks()) pc.addTrack(track, mic);
  meter(mic, $("mic-level"), call, null);
  call.channel = pc.createDataChannel("events");
  call.channel.onmessage = (e) => onEvent(JSON.parse(e.data));
  pc.ontrack = (e) => playRemote(e.streams[0] || new MediaStream([e.track]), call);
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "connected") {
      stats.connected = true;
      setStatus("in call", "live");
    } else if (pc.connectionState === "failed" && !call.ended) {
      showError(
        "The media connection to the server failed. If the server is on another network, " +
          "set AVA_WEBRTC_ICE_SERVERS to a TURN server.",
      );
      endCall(call);
    }
  };
  $("hangup").disabled = false;
  setStatus("connecting…");
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc, 3000);
    const body = { sdp: pc.localDescription.sdp, type: "offer", assistantId: $("assistant").value };
    if (state.token) body.token = state.token;
    const answer = await api("/webrtc/offer", { method: "POST", body });
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
  } catch (err) {
    showError(err.message);
    endCall(call);
  }
}

function hangUp() {
  const call = state.call;
  if (!call) return;
  $("hangup").disabled = true;
  if (call.channel && call.channel.readyState === "open") {
    call.channel.send(JSON.stringify({ type: "hangup" }));
    // The server answers with call-ended; close anyway if it does not.
    call.timers.push(setTimeout(() => endCall(call), 2000));
  } else {
    endCall(call);
  }
}

function endCall(call) {
  if (call.ended) return;
  call.ended = true;
  for (const t of call.timers) {
    clearTimeout(t);
    clearInterval(t);
  }
  for (const track of call.mic.getTracks()) track.stop();
  call.pc.close();
  $("remote-audio").srcObject = null;
  $("mic-level").style.width = "0";
  $("bot-level").style.width = "0";
  if (state.call === call) state.call = null;
  $("call").disabled = false;
  $("hangup").disabled = true;
  if (!$("error").hidden) return;
  setStatus("ready");
}

// --- audio: play the assistant, measure both sides --------------------------------------------

function playRemote(stream, call) {
  const audio = $("remote-audio");
  audio.srcObject = stream;
  audio.play().catch(() => {});
  meter(stream, $("bot-level"), call, (rms, ms) => {
    stats.botPeak = Math.max(stats.botPeak, rms);
    if (rms > 0.01) stats.botVoicedMs += ms;
  });
  call.timers.push(setInterval(() => readStats(call), 500));
}

function meter(stream, bar, call, onLevel) {
  const ctx = state.audioCtx;
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const every = 50;
  call.timers.push(
    setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const s of samples) sum += s * s;
      const rms = Math.sqrt(sum / samples.length);
      bar.style.width = `${Math.min(100, rms * 400)}%`;
      if (onLevel) onLevel(rms, every);
    }, every),
  );
}

async function readStats(call) {
  if (call.ended) return;
  const report = await call.pc.getStats();
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      stats.audioEnergy = s.totalAudioEnergy || 0;
      stats.samplesReceived = s.totalSamplesReceived || 0;
    }
  });
}

// --- live events ------------------------------------------------------------------------------

function resetLive() {
  $("transcript").replaceChildren();
  state.turns = [];
  $("waterfall").replaceChildren();
  Object.assign(stats, { connected: false, callId: null, endedReason: null, turns: 0 });
  Object.assign(stats, { transcripts: 0, partials: 0 });
  partial = null;
  Object.assign(stats, { botPeak: 0, botVoicedMs: 0, audioEnergy: 0, samplesReceived: 0 });
}

function line(who, text, cls = "") {
  const li = document.createElement("li");
  const label = document.createElement("span");
  label.className = "who";
  label.textContent = who;
  const body = document.createElement("span");
  body.textContent = text;
  if (cls) body.className = cls;
  li.append(label, body);
  $("transcript").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function note(text) {
  return line("", text, "note");
}

let partial = null; // {li, finals}: the caller's words while still being recognised

function onEvent(event) {
  switch (event.type) {
    case "call-started":
      stats.callId = event.callId;
      note(`Connected to ${event.assistant}.`);
      break;
    case "transcript": {
      // Interim results replace each other; final segments of one utterance add up.
      stats.transcripts += 1;
      if (!event.final) stats.partials += 1;
      if (!partial) partial = { li: line("you", "", "partial"), finals: [] };
      if (event.final) partial.finals.push(event.text);
      const words = event.final ? partial.finals : [...partial.finals, event.text];
      partial.li.lastChild.textContent = words.join(" ");
      break;
    }
    case "message": {
      if (event.role === "user") {
        if (partial) partial.li.remove();
        partial = null;
        line("you", event.text);
      } else {
        line("assistant", event.text, event.interrupted ? "interrupted" : "");
      }
      break;
    }
    case "barge-in":
      note(`You interrupted; the assistant stopped ${Math.round(event.reactionMs)} ms after you started.`);
      break;
    case "turn":
      stats.turns += 1;
      if (event.latencyMs) {
        state.turns.push({ label: event.user, latency: event.latencyMs });
        drawWaterfall($("waterfall"), state.turns);
      }
      break;
    case "provider-failed":
      note(`${event.stage} provider ${event.provider} failed: ${event.error}`);
      break;
    case "call-ended": {
      stats.endedReason = event.endedReason;
      note(`Call ended: ${event.endedReason}${event.detail ? ` (${event.detail})` : ""}.`);
      const call = state.call;
      if (call) endCall(call);
      setTimeout(refreshCalls, 800); // the recorder writes the call's last rows off the hot path
      break;
    }
    default:
      break;
  }
}

// --- the latency waterfall --------------------------------------------------------------------

const LANES = [
  // [label, css class, start(ms), length(ms)] from one turn's latency
  ["endpointing", "seg-endpointing", () => 0, (l) => l.endpointing],
  ["STT", "seg-stt", () => 0, (l) => l.stt],
  ["LLM", "seg-llm", (l) => l.endpointing, (l) => l.llm],
  ["TTS", "seg-tts", (l) => l.endpointing + l.llm, (l) => l.tts],
  // held: the reply's audio was ready but waited out stopSpeakingPlan.backoffSeconds
  ["held", "seg-held", (l) => l.endpointing + l.llm + l.tts, (l) => l.held ?? 0],
  ["server", "seg-server", (l) => l.endpointing + l.llm + l.tts + (l.held ?? 0), (l) => l.server],
];

function drawWaterfall(container, turns) {
  container.replaceChildren();
  const scale = Math.max(500, ...turns.map((t) => t.latency.voiceToVoice));
  turns.forEach((turn, i) => {
    const box = document.createElement("div");
    box.className = "turn";
    box.dataset.testid = "turn";
    const title = document.createElement("div");
    title.className = "turn-title";
    const total = document.createElement("b");
    total.textContent = `${Math.round(turn.latency.voiceToVoice)} ms`;
    title.append(`Turn ${i + 1}: `, total, ` voice-to-voice — “${turn.label || "…"}”`);
    box.append(title);
    for (const [name, cls, start, length] of LANES) {
      const lane = document.createElement("div");
      lane.className = "lane";
      const label = document.createElement("span");
      label.textContent = name;
      const track = document.createElement("span");
      track.className = "track";
      const seg = document.createElement("span");
      seg.className = `seg ${cls}`;
      const from = Math.max(0, start(turn.latency));
      const len = Math.max(0, length(turn.latency));
      seg.style.left = `${(100 * from) / scale}%`;
      seg.style.width = `${(100 * len) / scale}%`;
      track.append(seg);
      const ms = document.createElement("span");
      ms.className = "ms";
      ms.textContent = `${Math.round(len)} ms`;
      lane.append(label, track, ms);
      box.append(lane);
    }
    container.append(box);
  });
}

// --- recent calls -----------------------------------------------------------------------------

function callsPath(id = "") {
  // The dev scope's calls need no key, in dev mode only; a tenant's are at /call.
  const base = state.key ? "/call" : "/dev/call";
  return id ? `${base}/${encodeURIComponent(id)}` : `${base}?limit=10`;
}

function fmtDuration(call) {
  if (!call.startedAt || !call.endedAt) return call.status;
  const seconds = (Date.parse(call.endedAt) - Date.parse(call.startedAt)) / 1000;
  return `${seconds.toFixed(1)} s`;
}

async function refreshCalls() {
  const body = $("calls");
  if (!state.key && !(state.config && state.config.devMode)) {
    body.replaceChildren();
    return;
  }
  let calls;
  try {
    calls = await api(callsPath());
  } catch (err) {
    showError(err.message);
    return;
  }
  body.replaceChildren();
  for (const call of calls) {
    const tr = document.createElement("tr");
    tr.dataset.callId = call.id;
    const metrics = (call.artifact && call.artifact.performanceMetrics) || {};
    const turns = metrics.turnLatencies || [];
    const cells = [
      call.startedAt ? new Date(call.startedAt).toLocaleTimeString() : "",
      call.type,
      (call.metadata && call.metadata.assistantName) || call.assistantId || "",
      fmtDuration(call),
      call.endedReason || call.status,
    ];
    for (const text of cells) tr.append(cell(text));
    tr.append(cell(fmtCost(call.cost), costTitle(call), "cost"));
    const summary = callSummary(call);
    tr.append(cell(summary, summary, "summary"));
    const rec = document.createElement("td");
    rec.className = "recording";
    if (hasRecording(call)) rec.append(playButton(call.id, rec));
    tr.append(rec);
    tr.append(cell(String(turns.length)));
    const avg = metrics.turnLatencyAverage;
    tr.append(cell(avg !== undefined ? `${Math.round(avg)} ms` : ""));
    tr.addEventListener("click", () => showCall(call.id, tr));
    body.append(tr);
  }
}

function cell(text, title = "", cls = "") {
  const td = document.createElement("td");
  td.textContent = text;
  if (title) td.title = title; // an attribute value, never parsed as HTML
  if (cls) td.className = cls;
  return td;
}

function callSummary(call) {
  const analysis = call.analysis || {};
  return String(analysis.summary || call.summary || "");
}

function fmtCost(cost) {
  if (typeof cost !== "number") return "";
  return `$${cost < 0.01 && cost > 0 ? cost.toFixed(4) : cost.toFixed(2)}`;
}

// The breakdown shown on hover: Vapi's costBreakdown, else the call's costs[] items.
const COST_PARTS = [
  ["transport", "transport"],
  ["stt", "transcriber"],
  ["llm", "model"],
  ["tts", "voice"],
  ["vapi", "platform"],
];

function costTitle(call) {
  const b = call.costBreakdown;
  const lines = [];
  if (b) {
    for (const [field, label] of COST_PARTS) {
      if (typeof b[field] === "number" && b[field] > 0) lines.push(`${label}: ${fmtCost(b[field])}`);
    }
    if (b.llmPromptTokens || b.llmCompletionTokens) {
      lines.push(`tokens: ${b.llmPromptTokens || 0} in, ${b.llmCompletionTokens || 0} out`);
    }
    if (b.ttsCharacters) lines.push(`TTS characters: ${b.ttsCharacters}`);
  } else {
    for (const item of call.costs || []) {
      if (typeof item.cost === "number") lines.push(`${item.type}: ${fmtCost(item.cost)}`);
    }
  }
  return lines.join("\n");
}

function hasRecording(call) {
  const artifact = call.artifact || {};
  return Boolean(artifact.recordingUrl || call.recordingUrl);
}

// An <audio> element cannot send the API key, so the player gets a signed, expiring URL from
// GET /call/{id}/recording (GET /dev/call/{id}/recording for the dev scope, in dev mode), fetched
// only when asked for: a list of calls does not mint a token per row.
function recordingPath(id) {
  const base = state.key ? "/call" : "/dev/call";
  return `${base}/${encodeURIComponent(id)}/recording`;
}

// The signed URL's path and query on this page's origin: the player never leaves the server
// that served the page, whatever public URL the server names itself by.
function sameOrigin(url) {
  const u = new URL(url, location.href);
  return u.pathname + u.search;
}

function playButton(id, container) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "small";
  button.textContent = "▶ play";
  button.dataset.testid = "play-recording";
  button.addEventListener("click", async (e) => {
    e.stopPropagation(); // not the row's click (the call's detail)
    button.disabled = true;
    try {
      const info = await api(recordingPath(id));
      container.replaceChildren(recordingPlayer(info, true));
    } catch (err) {
      button.disabled = false;
      button.title = err.message;
      button.textContent = "▶ retry";
    }
  });
  return button;
}

function recordingPlayer(info, autoplay) {
  const box = document.createElement("span");
  box.className = "player";
  box.addEventListener("click", (e) => e.stopPropagation());
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.preload = "metadata";
  audio.dataset.testid = "recording";
  audio.src = sameOrigin(info.presignedRecordingUrl);
  const stereo = document.createElement("a");
  stereo.href = sameOrigin(info.presignedStereoRecordingUrl);
  stereo.textContent = "stereo";
  stereo.title = "caller left, assistant right; the link expires";
  stereo.download = "";
  box.append(audio, stereo);
  if (autoplay) audio.play().catch(() => {});
  return box;
}

async function showCall(id, row) {
  for (const r of $("calls").children) r.classList.toggle("selected", r === row);
  const detail = $("call-detail");
  let call;
  try {
    call = await api(callsPath(id));
  } catch (err) {
    showError(err.message);
    return;
  }
  detail.replaceChildren();
  const left = document.createElement("div");
  const h = document.createElement("h3");
  h.textContent = `${call.id} — ${call.endedReason || call.status}`;
  left.append(h);
  if (call.endedMessage) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = call.endedMessage;
    left.append(p);
  }
  left.append(analysisBlock(call));
  if (hasRecording(call)) {
    const slot = document.createElement("p");
    slot.append(playButton(call.id, slot));
    left.append(slot);
  }
  const list = document.createElement("ol");
  list.className = "transcript";
  for (const m of call.messages || []) {
    if (m.role !== "user" && m.role !== "bot") continue;
    const li = document.createElement("li");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = m.role === "bot" ? "assistant" : "caller";
    const text = document.createElement("span");
    text.textContent = m.message;
    if (m.interrupted) text.className = "interrupted";
    li.append(who, text);
    list.append(li);
  }
  left.append(list);
  const right = document.createElement("div");
  const h2 = document.createElement("h3");
  h2.textContent = "Turn latency";
  const chart = document.createElement("div");
  const turns = ((call.artifact && call.artifact.performanceMetrics) || {}).turnLatencies || [];
  const users = (call.messages || []).filter((m) => m.role === "user").map((m) => m.message);
  drawWaterfall(
    chart,
    turns.map((t, i) => ({
      label: users[i] || "",
      latency: {
        voiceToVoice: t.turnLatency,
        endpointing: t.endpointingLatency,
        stt: t.transcriberLatency,
        llm: t.modelLatency,
        tts: t.voiceLatency,
        server: t.serverLatency || 0,
      },
    })),
  );
  if (!turns.length) chart.textContent = "No completed turns.";
  right.append(h2, chart);
  detail.append(left, right);
}

function analysisBlock(call) {
  const dl = document.createElement("dl");
  dl.className = "analysis";
  dl.dataset.testid = "call-analysis";
  const add = (term, value, title = "") => {
    if (value === undefined || value === null || value === "") return;
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = typeof value === "string" ? value : JSON.stringify(value);
    if (title) dd.title = title;
    dl.append(dt, dd);
  };
  const analysis = call.analysis || {};
  add("summary", callSummary(call));
  add("success", analysis.successEvaluation);
  add("structured data", analysis.structuredData);
  if (analysis.errors && Object.keys(analysis.errors).length) add("analysis errors", analysis.errors);
  add("cost", fmtCost(call.cost), costTitle(call));
  const variables = (call.artifact || {}).variableValues;
  if (variables && Object.keys(variables).length) add("variables", variables);
  return dl;
}

// --- outbound test calls ----------------------------------------------------------------------

// POST /call needs a tenant's key, one of its assistants and one of its imported numbers: the
// call goes through that number's Twilio account (in dev, AVA_TWILIO_API_BASE_URL can point at
// the fake Twilio REST so nothing is dialled).
async function setupOutbound() {
  const assistantSelect = $("out-assistant");
  const numberSelect = $("out-number");
  assistantSelect.replaceChildren();
  numberSelect.replaceChildren();
  $("place-call").disabled = true;
  const result = $("out-result");
  for (const field of $("outbound").querySelectorAll("input, select")) field.disabled = !state.key;
  $("add-var").disabled = !state.key;
  if (!state.key) {
    result.textContent = "Enter an API key: outbound calls go from one of your tenant's numbers.";
    return;
  }
  for (const a of state.assistants) assistantSelect.append(option(a.id, a.name));
  let numbers = [];
  try {
    numbers = await api("/phone-number?limit=100");
  } catch (err) {
    result.textContent = err.message;
    return;
  }
  for (const n of numbers) {
    numberSelect.append(option(n.id, n.name ? `${n.number} (${n.name})` : n.number));
  }
  if (!numbers.length) {
    result.textContent = "Import a number first (POST /phone-number) to call from it.";
  } else if (!state.assistants.length) {
    result.textContent = "Create an assistant first (POST /assistant).";
  } else {
    result.textContent = "";
    $("place-call").disabled = false;
  }
}

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

function addVariableRow(name = "", value = "") {
  const row = document.createElement("div");
  row.className = "row var";
  row.dataset.testid = "var-row";
  const key = document.createElement("input");
  key.placeholder = "name";
  key.value = name;
  key.className = "var-name";
  key.setAttribute("aria-label", "variable name");
  const val = document.createElement("input");
  val.placeholder = "value";
  val.value = value;
  val.className = "var-value";
  val.setAttribute("aria-label", "variable value");
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "small";
  remove.textContent = "✕";
  remove.title = "remove this variable";
  remove.addEventListener("click", () => row.remove());
  row.append(key, val, remove);
  $("out-vars").append(row);
}

// The request body, as Vapi's SDKs send it; throws on two variables of one name.
function outboundBody() {
  const variableValues = {};
  for (const row of $("out-vars").children) {
    const name = row.querySelector(".var-name").value.trim();
    if (!name) continue;
    if (Object.hasOwn(variableValues, name)) throw new Error(`variable "${name}" is given twice`);
    variableValues[name] = row.querySelector(".var-value").value;
  }
  const body = {
    assistantId: $("out-assistant").value,
    phoneNumberId: $("out-number").value,
    customer: { number: $("out-customer").value.trim() },
  };
  if (Object.keys(variableValues).length) body.assistantOverrides = { variableValues };
  return body;
}

async function placeOutbound(e) {
  e.preventDefault();
  const result = $("out-result");
  result.className = "hint";
  let body;
  try {
    body = outboundBody();
  } catch (err) {
    result.className = "hint error-text";
    result.textContent = err.message;
    return;
  }
  $("place-call").disabled = true;
  result.textContent = "placing…";
  try {
    const call = await api("/call", { method: "POST", body });
    stats.outboundCallId = call.id;
    result.textContent = `Placed ${call.id} (${call.status}) to ${body.customer.number}.`;
    refreshCalls();
  } catch (err) {
    result.className = "hint error-text";
    result.textContent = err.message;
  } finally {
    $("place-call").disabled = false;
  }
}

// --- wiring -----------------------------------------------------------------------------------

$("key").value = state.key;
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("key").value.trim();
  if (state.key) sessionStorage.setItem("ava.key", state.key);
  else sessionStorage.removeItem("ava.key");
  setup();
});
$("call").addEventListener("click", startCall);
$("hangup").addEventListener("click", hangUp);
$("refresh").addEventListener("click", refreshCalls);
$("outbound").addEventListener("submit", placeOutbound);
$("add-var").addEventListener("click", () => addVariableRow());
addVariableRow();
setup();
