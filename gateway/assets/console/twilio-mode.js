// The phone's "through Twilio" mode (shown when the server has a TwiML App and API key
// credentials): the Voice SDK bundle committed under vendor/ (served by hark, no CDN) places a
// real call through Twilio as the browser client `console`, with a token from
// POST /console/voice-token. Twilio then posts /voice: no `To` reaches hark's agent over Media
// Streams; a phone number is bridged with <Dial>.

const $ = (id) => document.getElementById(id);

function loadSdk() {
  if (window.Twilio && window.Twilio.Device) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = "/console/assets/twilio.min.js";
    s.onload = () => resolve();
    s.onerror = () => reject(new Error("cannot load the Voice SDK"));
    document.head.append(s);
  });
}

async function token() {
  const r = await fetch("/console/voice-token", { method: "POST", credentials: "same-origin" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `token: ${r.status}`);
  return body.token;
}

/** Shows the mode and wires its buttons; `log` writes to the page's event list. */
export async function setup(log) {
  const mode = { loaded: false, version: null, state: "loading", device: null, call: null };
  window.harkPhone.twilio = mode;
  $("twilio-mode").hidden = false;
  const state = (s) => {
    mode.state = s;
    $("twilio-state").textContent = s;
    $("twilio-call").disabled = !(s === "ready" || s === "ended");
    $("twilio-hangup").disabled = !(s === "ringing" || s === "in-call");
  };
  try {
    await loadSdk();
  } catch (e) {
    state(`unavailable: ${e.message}`);
    return mode;
  }
  mode.loaded = typeof window.Twilio.Device === "function";
  mode.version = window.Twilio.Device.version || null;
  state("ready");
  $("twilio-call").addEventListener("click", async () => {
    state("connecting");
    try {
      if (!mode.device) {
        mode.device = new window.Twilio.Device(await token(), {
          closeProtection: false,
          codecPreferences: ["opus", "pcmu"],
          logLevel: "warn",
        });
        mode.device.on("tokenWillExpire", async () => mode.device.updateToken(await token()));
        mode.device.on("error", (e) => log(`Twilio: ${e.message || e}`, "error"));
      }
      const to = $("twilio-to").value.trim();
      const call = await mode.device.connect({ params: to ? { To: to } : {} });
      mode.call = call;
      state("ringing");
      log(`Twilio: calling ${to || "hark's agent"}`);
      call.on("accept", () => {
        state("in-call");
        log(`Twilio: connected (${call.parameters.CallSid || "call"})`);
      });
      const ended = (why) => () => {
        mode.call = null;
        state("ended");
        log(`Twilio: call ${why}`);
      };
      call.on("disconnect", ended("ended"));
      call.on("cancel", ended("cancelled"));
      call.on("reject", ended("rejected"));
      call.on("error", (e) => log(`Twilio call error: ${e.message || e}`, "error"));
    } catch (e) {
      state("ended");
      log(`Twilio: cannot call: ${e.message || e}`, "error");
    }
  });
  $("twilio-hangup").addEventListener("click", () => mode.call && mode.call.disconnect());
  for (const b of document.querySelectorAll("#keypad [data-digit]")) {
    b.addEventListener("click", () => mode.call && mode.state === "in-call" && mode.call.sendDigits(b.dataset.digit));
  }
  return mode;
}
