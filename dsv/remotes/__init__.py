"""Where bytes come from and go to outside the store: S3 (and, with sync, filesystem and
cache remotes). Remotes know nothing of the index: they move named bytes."""
