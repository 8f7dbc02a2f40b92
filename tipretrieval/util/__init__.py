"""Small shared helpers with no knowledge of stores or caches: crash-safe file writes
(`atomic`), file checksums (`checksum`), versioned JSON documents (`jsonfile`), progress bars
(`progress`), working one item ahead in a thread (`prefetch`), reserving disk blocks before a
library writes a file (`reserve`), files built in memory and saved around the page cache
(`file_image`), glibc's malloc giving freed large blocks back (`malloc`)
and Ray start-up (`ray_setup`).

May import: `tipretrieval.errors` and third-party libraries only.
"""
