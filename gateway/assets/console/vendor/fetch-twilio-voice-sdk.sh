#!/usr/bin/env bash
# Makes the committed Twilio Voice JavaScript SDK bundle the browser phone loads in its
# "through Twilio" mode (no CDN at run time): the npm package's own prebuilt browser bundle
# (dist/twilio.min.js, which includes its dependencies) and its licence, copied verbatim.
#
# Run from anywhere with Node's npm (tested with npm 11.19.1, Node 20.20.2):
#   gateway/assets/console/vendor/fetch-twilio-voice-sdk.sh
# then `git diff --stat` and commit. `sha256sum -c SHA256SUMS` in this folder checks the files.
set -euo pipefail
VERSION="2.18.5"
# npm's published integrity of the tarball (`npm view @twilio/voice-sdk@2.18.5 dist.integrity`).
INTEGRITY="sha512-2/tw1IDAIn7j6yFDOln8p93v3aHIxNIN93JwL98cHIlbkSNeU/Jt9zGM/0TvDpNjo+k88lvAew4jgOjKlc9/KA=="
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "@twilio/voice-sdk@${VERSION}" >/dev/null
tgz="twilio-voice-sdk-${VERSION}.tgz"
got="sha512-$(openssl dgst -sha512 -binary "$tgz" 2>/dev/null | base64 -w0 || python3 -c "import base64,hashlib,sys;print(base64.b64encode(hashlib.sha512(open(sys.argv[1],'rb').read()).digest()).decode())" "$tgz")"
if [ "$got" != "$INTEGRITY" ]; then
  echo "integrity mismatch for $tgz: $got" >&2
  exit 1
fi
tar xzf "$tgz"
cp package/dist/twilio.min.js "$here/twilio.min.js"
cp package/LICENSE.md "$here/LICENSE-twilio-voice-sdk.md"
cd "$here"
sha256sum twilio.min.js LICENSE-twilio-voice-sdk.md > SHA256SUMS
echo "wrote $here/twilio.min.js ($(wc -c < twilio.min.js) bytes) from @twilio/voice-sdk@${VERSION}"
