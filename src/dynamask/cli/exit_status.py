"""The exit statuses of ``dynamask``, shared by the commands and the entry point that maps errors
to them."""

EXIT_OK = 0
EXIT_UNEXPECTED = 1  # a bug: reported as one line, the traceback with --debug
EXIT_USER_ERROR = 2  # an error in the user's input (config, paths, data)
EXIT_INTERRUPTED = 130  # Ctrl-C, or a training run stopped by a signal
