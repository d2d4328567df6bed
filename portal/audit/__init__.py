"""The audit log's single write path, its keyed hash chain, anchors and verification.

Each row stores ``prev_hash`` (the previous row's ``hash``) and ``hash``, an
HMAC-SHA256 over the row's content with a key from settings (never from the
database); ``key_id`` names the key, so keys rotate: the first configured key
signs, the others still verify. Rows from before keyed chains (empty
``key_id``, plain SHA-256) verify as "legacy", only as a prefix of the log.

Whoever can write the table but does not hold the key cannot make an edited,
rewritten or re-ordered row verify. Deleting the newest rows, or the whole
table, leaves a shorter chain that is intact: anchors catch that. An anchor is
a line ``{id, hash, count, time}`` (itself HMAC'ed and chained to the line
before) appended to a file outside the database by the periodic job and by
``audit_verify``; every later verification checks that each anchored event is
still there, with the same hash and the same number of events up to it.

The MAC covers the database's own canonical text of ``details`` (PostgreSQL's
``jsonb::text``; SQLite's ``json()``), asked for in the query that reads the
previous hash, so verifying is one streamed query and one HMAC per row, with no
JSON decoding in Python. docs/security.md has the whole model.

Modules: ``chain`` (``record``, the MAC input, verification), ``keys`` (settings,
rotation, the SECRET_KEY-derived fallback), ``anchors`` (the anchor file, the
periodic job). Import from ``portal.audit``.
"""

from portal.audit.anchors import (
    Anchor,
    AnchorFile,
    AuditChainBroken,
    anchor_dir,
    anchor_file,
    anchor_interval,
    last_trusted_anchor,
    periodic_anchor,
    read_anchors,
    write_anchor,
)
from portal.audit.chain import (
    GENESIS_HASH,
    SEP,
    Actor,
    ChainProblem,
    ChainReport,
    compute_hash,
    mac_input,
    record,
    scan_chain,
    subject_of,
    verify_chain,
)
from portal.audit.keys import AuditKey, Keyring, check_audit_keys, derive_key, keyring

__all__ = [
    "GENESIS_HASH", "SEP", "Actor", "Anchor", "AnchorFile",
    "AuditChainBroken", "AuditKey", "ChainProblem", "ChainReport", "Keyring", "anchor_dir",
    "anchor_file", "anchor_interval", "check_audit_keys", "compute_hash", "derive_key",
    "keyring", "last_trusted_anchor", "mac_input", "periodic_anchor", "read_anchors",
    "record", "scan_chain", "subject_of", "verify_chain", "write_anchor",
]  # fmt: skip
