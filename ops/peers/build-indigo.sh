#!/usr/bin/env bash
# Build the unmodified atproto peers the interoperability tests run against skyattr's relay and synthetic archives:
# indigo's `repo-tool` (its `verify-firehose` checks every #commit's MST inversion against prevData) and indigo's
# `relay` (verifies every commit's signature against the DID document before it re-broadcasts it), both from the
# Go module proxy at the pinned version below.
# Usage: bash ops/peers/build-indigo.sh        (prints the bin directory; env: SKYATTR_PEERS_DIR, default
#        $XDG_CACHE_HOME/skyattr/peers or ~/.cache/skyattr/peers; a second run with the binaries there is instant)
set -euo pipefail

# The newest indigo the module proxy serves here (goat and Jetstream, which live in their own modules, are not served).
INDIGO=github.com/bluesky-social/indigo
VERSION=v0.0.0-20260605210604-af2fec94f34c

case "${1:-}" in
    "") ;;
    -h | --help)
        sed -n '2,7s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *)
        echo "build-indigo: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
esac

command -v go >/dev/null || { echo "build-indigo: no 'go' on PATH (Go 1.24 or newer is needed)" >&2; exit 1; }
DIR="${SKYATTR_PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/skyattr/peers}"
BIN="$DIR/bin"
STAMP="$BIN/.indigo-version"
if [[ -x "$BIN/repo-tool" && -x "$BIN/relay" && "$(cat "$STAMP" 2>/dev/null)" == "$VERSION" ]]; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$BIN"
# Outside any module, so this repository's files play no part; -buildvcs=false: there is no VCS to stamp.
(cd "$DIR" && GOBIN="$BIN" GOFLAGS=-buildvcs=false GO111MODULE=on \
    go install "$INDIGO/atproto/repo/cmd/repo-tool@$VERSION" "$INDIGO/cmd/relay@$VERSION") >&2 \
    || { echo "build-indigo: go install of $INDIGO@$VERSION failed (is the Go module proxy reachable?)" >&2; exit 1; }
echo "$VERSION" > "$STAMP"
echo "$BIN"
