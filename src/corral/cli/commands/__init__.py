"""The `corral` subcommands that talk to a running server (and `doctor`)."""
