"""Small shared helpers with no knowledge of stores or caches: crash-safe file writes
(`atomic`), file checksums (`checksum`), versioned JSON documents (`jsonfile`), progress bars
(`progress`) and Ray start-up (`ray_setup`).

May import: `tipretrieval.errors` and third-party libraries only.
"""
