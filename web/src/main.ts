// The page: sign-in, the conversation list and one conversation. All text
// reaches the page through textContent, never as markup.
import { Client, type Status, ServerError } from "./client.js";
import { formatSafetyNumber } from "./content.js";
import type { MessageRecord } from "./store.js";

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el as T;
};

const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
let client: Client | null = null;
let current: string | null = null;

const events = {
  status(s: Status, detail: string) {
    const el = $("status");
    el.textContent = detail;
    el.className = s;
    if (s === "signed-out") showSignIn("Your session ended: log in again.");
  },
  async changed(peer: string | null) {
    // What arrives in the conversation on screen is read.
    if (client && current && peer === current && document.visibilityState === "visible") await client.markRead(current);
    void renderList();
    if (current && (peer === null || peer === current)) void renderConversation();
  },
};

function showSignIn(message = ""): void {
  client = null;
  current = null;
  $("signin").hidden = false;
  $("chat").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("signin-error").textContent = message;
  $<HTMLInputElement>("user").focus();
}

function showChat(): void {
  $("signin").hidden = true;
  $("chat").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = `${client!.account.user} (device ${client!.account.device})`;
  void renderList();
}

async function signIn(register: boolean): Promise<void> {
  const form = $<HTMLFormElement>("signin-form");
  if (!form.reportValidity()) return;
  const user = $<HTMLInputElement>("user").value.trim();
  const password = $<HTMLInputElement>("password").value;
  const device = Number($<HTMLInputElement>("device").value);
  $("signin-error").textContent = register ? "Registering…" : "Logging in…";
  try {
    client = await Client.signIn(url, user, password, device, register, events);
    $<HTMLInputElement>("password").value = "";
    showChat();
  } catch (e) {
    $("signin-error").textContent = describe(e);
  }
}

function describe(e: unknown): string {
  if (e instanceof ServerError) {
    const known: Record<string, string> = {
      BadCredentials: "The user name and password do not match.",
      UserExists: "That user name is taken.",
      RateLimited: "Too many attempts: wait a minute and try again.",
      InvalidRequest: "The server refused that: check the user name (lower-case letters, digits, '.', '_', '-') and the password (8 characters at least).",
      SecondFactorRequired: "This account needs a second factor, which this client does not support yet: use the chatify CLI.",
      Unreachable: "The server cannot be reached.",
      NoSuchUser: "No such user.",
    };
    return known[e.code] ?? `${e.code}: ${e.message}`;
  }
  return (e as Error).message;
}

async function renderList(): Promise<void> {
  if (!client) return;
  const list = $("conversations");
  const items = await client.conversations();
  list.replaceChildren(
    ...items.map((c) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.setAttribute("aria-current", String(c.peer === current));
      const name = document.createElement("span");
      name.textContent = c.peer;
      b.append(name);
      if (c.unread > 0 && c.peer !== current) {
        const badge = document.createElement("span");
        badge.className = "unread";
        badge.textContent = String(c.unread);
        badge.setAttribute("aria-label", `${c.unread} unread`);
        b.append(badge);
      }
      b.addEventListener("click", () => void open(c.peer));
      li.append(b);
      return li;
    }),
  );
}

async function open(peer: string): Promise<void> {
  if (!client) return;
  current = peer;
  $("conversation").hidden = false;
  $("safety").hidden = true;
  $("verify").setAttribute("aria-expanded", "false");
  $("send-error").textContent = "";
  await client.openConversation(peer);
  await renderConversation();
  $<HTMLTextAreaElement>("text").focus();
}

function stateText(m: MessageRecord): string {
  switch (m.state) {
    case "sending":
      return "sending…";
    case "sent":
      // §7.2: no receipt within the grace period is reported.
      return Date.now() - m.at > 5 * 60 * 1000 ? "stored by the server but not delivered" : "sent (stored by the server)";
    case "delivered":
      return "delivered";
    case "failed":
      return "not sent";
    case "interrupted":
      return "the page closed while sending: it may not have arrived";
    default:
      return "";
  }
}

async function renderConversation(): Promise<void> {
  if (!client || !current) return;
  const peer = current;
  $("peer-name").textContent = peer;
  const pin = await client.pin(peer);
  $("verified").textContent = pin?.verified && !pin.changed ? "✓ verified" : "";
  const warn = $("identity-warning");
  warn.hidden = !pin?.changed;
  warn.textContent = pin?.changed
    ? `${peer}'s safety number has changed. They may have reinstalled, or someone may be in the middle. Sending is blocked until you compare the new safety number and confirm it.`
    : "";
  $<HTMLButtonElement>("send").disabled = Boolean(pin?.changed);
  const messages = await client.messages(peer);
  if (current !== peer) return;
  $("messages").replaceChildren(
    ...messages.map((m) => {
      const li = document.createElement("li");
      li.className = m.text === "" && m.warning ? "notice" : m.dir;
      li.textContent = m.text;
      if (m.warning) {
        const flag = document.createElement("span");
        flag.className = "flag";
        flag.textContent = `⚠ ${m.warning}`;
        li.append(flag);
      }
      const meta = document.createElement("span");
      meta.className = "meta";
      const time = new Date(m.at).toLocaleTimeString();
      meta.textContent = [m.dir === "out" ? "you" : peer, time, stateText(m), m.late ? "arrived late" : ""].filter(Boolean).join(" · ");
      li.append(meta);
      li.dataset.state = m.state ?? "";
      return li;
    }),
  );
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
  if (!$("safety").hidden) await showSafety();
}

async function showSafety(): Promise<void> {
  if (!client || !current) return;
  const n = await client.safetyNumber(current);
  $("safety-peer").textContent = current;
  $("safety-number").textContent = n ? formatSafetyNumber(n) : "No safety number yet: exchange a message first.";
  $<HTMLButtonElement>("confirm").disabled = !n;
}

async function send(): Promise<void> {
  if (!client || !current) return;
  const box = $<HTMLTextAreaElement>("text");
  const text = box.value;
  if (text.trim() === "") return;
  $("send-error").textContent = "";
  box.value = "";
  try {
    await client.send(current, text);
  } catch (e) {
    box.value = text;
    $("send-error").textContent = describe(e);
  }
  await renderConversation();
}

function wire(): void {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void signIn(false);
  });
  $("register").addEventListener("click", () => void signIn(true));
  document.addEventListener("visibilitychange", async () => {
    if (document.visibilityState !== "visible" || !client || !current) return;
    await client.markRead(current);
    await renderList();
  });
  $("logout").addEventListener("click", async () => {
    await client?.logout();
    showSignIn("Logged out. Your keys and messages stay in this browser.");
  });
  $("new-chat").addEventListener("submit", (e) => {
    e.preventDefault();
    const peer = $<HTMLInputElement>("peer").value.trim();
    $<HTMLInputElement>("peer").value = "";
    if (peer) void open(peer);
  });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    void send();
  });
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      void send();
    }
  });
  $("verify").addEventListener("click", async () => {
    const panel = $("safety");
    panel.hidden = !panel.hidden;
    $("verify").setAttribute("aria-expanded", String(!panel.hidden));
    $("safety-number").textContent = "";
    if (!panel.hidden) await showSafety();
  });
  $("confirm").addEventListener("click", async () => {
    if (!client || !current) return;
    await client.confirmIdentity(current);
    $("safety").hidden = true;
    $("verify").setAttribute("aria-expanded", "false");
    await renderConversation();
  });
}

async function boot(): Promise<void> {
  wire();
  if (!("locks" in navigator) || !globalThis.crypto?.subtle) {
    $("status").textContent = "This browser lacks what the client needs (WebCrypto, Web Locks).";
    return;
  }
  // One tab holds the device: a second tab would displace the first's connection.
  await navigator.locks.request(`chatify:${location.host}`, { ifAvailable: true }, async (lock) => {
    if (!lock) {
      $("status").textContent = "Chatify is open in another tab of this browser. Close it, then reload.";
      return;
    }
    try {
      client = await Client.resume(url, events);
    } catch (e) {
      $("status").textContent = `The stored state cannot be opened: ${(e as Error).message}`;
      return new Promise(() => {});
    }
    if (client) showChat();
    else {
      $("status").textContent = "Not signed in";
      showSignIn();
    }
    return new Promise(() => {}); // Held for the page's life.
  });
}

void boot();
