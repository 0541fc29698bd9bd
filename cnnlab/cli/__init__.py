"""The `cnnlab` command line. Each `cmd_<name>.py` here is one subcommand (see `main.py`)."""
