"""Job isolation and accounting: run a stranger's job so it cannot touch the host, and meter it."""
