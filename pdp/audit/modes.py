"""The file mode of what pdp writes about decisions: the audit ledger, its rotated files,
anchors, lock and spool.

Why: they hold every tenant's decisions. Owner read/write and group read lets a log shipper
in pdp's group read them, and no other local user (the umask may take more away).
"""

AUDIT_FILE_MODE = 0o640
