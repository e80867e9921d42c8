"""Exit codes of the prefork master and its children, in one place."""

EX_OK = 0
EX_CHILD_BOOT = 3  # a child failed before it was ready (e.g. its job module did not import)
EX_UNAVAILABLE = 69  # a required service (Redis) could not be reached
EX_CONFIG = 78  # bad configuration: systemd's RestartPreventExitStatus keeps it from looping
