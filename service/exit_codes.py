"""The exit codes of `repaint` commands, defined once (cli and batch read them; docs/usage.md tells them)."""

EXIT_OK = 0
EXIT_JOB_FAILED = 1     # a job failed or was canceled (a folder: at least one)
EXIT_REFUSED = 2        # the service refused the request (4xx), or the command line or a setting is wrong
EXIT_UNREACHABLE = 3    # the service could not be reached, or was lost mid-run
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped with Ctrl-C
