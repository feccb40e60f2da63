"""One module per ``cicd`` subcommand."""
