"""User-data for a cloud instance: a script that cloud-init runs, carrying the bootstrap
document on one line of its own.

On a stock image (a Debian AMI with cloud-init and python3), the script fetches the
one-file agent from the broker, over TLS pinned to the fingerprint the document carries,
and starts it. On an image with the agent baked in, the script does nothing: the image's
unit runs the agent, which reads the same user-data from the instance metadata and finds
the document on its line (`agent.parse_bootstrap`).
"""

from __future__ import annotations

import json

from corral.agent import AGENT_PATH, BOOTSTRAP_LINE

_LAUNCHER = r"""#!/bin/sh
# A node of a corral cluster: this installs and starts its context agent, unless its
# image has one. The document below holds a short-lived, single-use secret.
{line}
set -eu
umask 077
if [ -e /usr/local/lib/corral/agent.py ]; then exit 0; fi
mkdir -p /usr/local/lib/corral
python3 - "$0" <<'PY'
import hashlib, json, socket, ssl, sys, urllib.parse
line = next(l for l in open(sys.argv[1]) if l.startswith("{prefix}"))
doc = json.loads(line[len("{prefix}"):])
url = urllib.parse.urlsplit(doc["broker"])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # pinned below
with socket.create_connection((url.hostname, url.port or 443), timeout=30) as raw:
    with context.wrap_socket(raw, server_hostname=url.hostname) as tls:
        seen = "sha256:" + hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
        if seen != doc["fingerprint"].lower():
            sys.exit("corral: the broker's certificate is not the one pinned")
        path = url.path.rstrip("/") + "{agent_path}"
        tls.sendall(("GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (path, url.hostname)).encode())
        reply = b"".join(iter(lambda: tls.recv(65536), b""))
head, _, body = reply.partition(b"\r\n\r\n")
if b" 200 " not in head.split(b"\r\n")[0]:
    sys.exit("corral: the broker did not give the agent: " + head.split(b"\r\n")[0].decode())
open("/usr/local/lib/corral/agent.py", "wb").write(body)
PY
chmod 0755 /usr/local/lib/corral/agent.py
cd /usr/local/lib/corral
if command -v systemd-run >/dev/null; then
  exec systemd-run --unit corral-agent --property Restart=on-failure \
    /usr/bin/python3 -m agent --root / --ec2
fi
nohup /usr/bin/python3 -m agent --root / --ec2 >/var/log/corral-agent.log 2>&1 &
"""


def launcher_script(bootstrap: bytes) -> bytes:
    """The user-data for a node (or a group's nodes) whose bootstrap document is
    `bootstrap` (JSON)."""
    compact = json.dumps(json.loads(bootstrap), separators=(",", ":"), sort_keys=True)
    line = BOOTSTRAP_LINE + compact
    return _LAUNCHER.format(line=line, prefix=BOOTSTRAP_LINE, agent_path=AGENT_PATH).encode()
