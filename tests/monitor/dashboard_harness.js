// Runs /dashboard's inline script against a live monitoring service with a minimal DOM (node has no browser here):
// every console warning or error, failed request, exception and unhandled rejection is collected.
// Usage: node dashboard_harness.js http://127.0.0.1:PORT [#family=NAME]  → prints {"errors": [...], "html": {element id: markup}}.
"use strict";
const vm = require("vm");

const base = process.argv[2];
const errors = [];
process.on("unhandledRejection", (e) => errors.push("unhandled rejection: " + (e && e.stack ? e.stack : e)));

(async () => {
  const page = await (await fetch(base + "/dashboard")).text();
  const scripts = [...page.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1]);
  const elements = {};
  for (const [, id] of page.matchAll(/\sid="([^"]+)"/g)) {
    elements[id] = {
      id, innerHTML: "", textContent: "", value: id === "bucket" ? "3600" : "", listeners: {},
      addEventListener(type, fn) { this.listeners[type] = fn; },
    };
  }
  const document = {
    getElementById(id) {
      if (!(id in elements)) errors.push("document.getElementById('" + id + "') is null");
      return elements[id] || null;
    },
    querySelectorAll: () => [],
  };
  const sandbox = {
    document, URL, URLSearchParams, encodeURIComponent,
    setInterval: () => 0,
    fetch: async (path, options) => {
      const response = await fetch(new URL(path, base), options);
      if (!response.ok) errors.push("GET " + path + " answered " + response.status);
      return response;
    },
    console: {
      log() {}, info() {},
      warn: (...args) => errors.push("console.warn: " + args.join(" ")),
      error: (...args) => errors.push("console.error: " + args.join(" ")),
    },
  };
  sandbox.window = sandbox;
  sandbox.window.location = { hash: process.argv[3] || "", origin: base };
  vm.createContext(sandbox);
  try {
    for (const script of scripts) vm.runInContext(script, sandbox);
    await sandbox.window.dashboardReady;
  } catch (e) {
    errors.push("exception: " + (e && e.stack ? e.stack : e));
  }
  const html = {};
  for (const [id, el] of Object.entries(elements)) html[id] = el.innerHTML || el.textContent;
  html.error = elements.error ? elements.error.textContent : "";
  console.log(JSON.stringify({ errors, html }));
})();
