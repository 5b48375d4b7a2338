"""``.expert`` packages: build, checksum, sign, verify, install into the local store."""
