#!/usr/bin/env bash
# Installs the Socket.io peer's pinned dependencies (package-lock.json) from
# the npm registry. Needs Node.js >= 18 and npm.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
node -e 'console.log("socket.io " + require("socket.io/package.json").version + " installed, node " + process.version)'
