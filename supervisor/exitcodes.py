"""Exit codes of the prefork master and its children (the application's own, e.g. the
CLI's EX_CONFIG, are the application's)."""

EX_OK = 0
EX_CHILD_BOOT = 3  # a child failed before it was ready (e.g. its job module did not import)
