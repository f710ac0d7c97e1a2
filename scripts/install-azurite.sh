#!/usr/bin/env bash
# Installs Azurite (the Azure Storage emulator, npm package `azurite`) into .tools/ for the
# tests. Idempotent: does nothing when the pinned version is already there.
set -euo pipefail

VERSION="${AZURITE_VERSION:-3.37.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/node_modules/.bin/azurite-blob"
INSTALLED="$TOOLS/node_modules/azurite/package.json"

if [[ -x "$BIN" && -f "$INSTALLED" ]] && grep -q "\"version\": \"$VERSION\"" "$INSTALLED"; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "install-azurite: npm is needed to install azurite $VERSION (apt-get install npm)" >&2
    exit 1
fi
mkdir -p "$TOOLS"
npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error "azurite@$VERSION"
echo "install-azurite: azurite $VERSION at $BIN"
