"""Every bound corral puts on what it reads from outside, in one place (docs/security.md
lists them for users). Whatever arrives is refused, with an error naming the bound,
before it is read whole or acted on.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

# cluster documents (YAML or Nimbus XML), as text
MAX_DOCUMENT_BYTES = 256 * KIB
MAX_DOCUMENT_DEPTH = 32  # nesting of mappings and lists (elements in XML)
MAX_DOCUMENT_VALUES = 20_000  # scalars, mappings and lists, with YAML aliases expanded
MAX_DOCUMENT_TEXT = MAX_DOCUMENT_BYTES  # characters of all scalars, with aliases expanded
# a number, size or duration written as text (a document's, a command line's)
MAX_NUMBER_CHARS = 100
# a document's `data`, which reaches every node's view
MAX_DATA_ITEMS = 256
MAX_DATA_BYTES = 64 * KIB  # names and values together, UTF-8

# a document's `users`: accounts on every node, each with its SSH public keys
MAX_USERS = 64
MAX_USER_KEYS = 16
MAX_SSH_KEY_CHARS = 16 * KIB  # one public key line (an RSA 16384 key is ~2.8 KiB)

# a group of nodes, and the sizes it asks for
MAX_GROUP_COUNT = 10_000
MAX_CLUSTER_NODES = 10_000  # all groups of one cluster together
MAX_CORES = 4096
MAX_POOLS = 16  # pools one document may list
MAX_HOURLY_PRICE = 10_000.0  # per node-hour, in a pool's currency
MAX_MEMORY_MIB = 64 * MIB  # 64 TiB

# what an admin registers: a host's capacity, a user's quota, an image's size
MAX_HOST_CORES = 65_536
MAX_HOST_MEMORY_MIB = MAX_MEMORY_MIB
MAX_QUOTA_NODES = 1_000_000
MAX_QUOTA_NODE_HOURS = 1e9
MAX_IMAGE_BYTES = 1024**4  # 1 TiB

# durations anywhere (leases, timeouts, extensions)
MAX_DURATION_SECONDS = 10 * 365 * 86400

# request bodies: the REST API (a launch carries a document, JSON-escaped) and the broker
MAX_API_BODY_BYTES = 2 * MIB
MAX_BROKER_BODY_BYTES = 128 * KIB
MAX_LOG_TAIL_CHARS = 16 * KIB  # what one report may carry of a script's output
# what one answer may carry of a node's console (`corral console --bytes`)
MAX_CONSOLE_BYTES = MIB
DEFAULT_CONSOLE_BYTES = 64 * KIB

# an event id a client may ask to read after (the store's largest integer)
MAX_EVENT_ID = 2**63 - 1

# free text that is echoed back (a document's source name)
MAX_SOURCE_CHARS = 255
