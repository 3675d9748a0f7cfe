"""The job protocol's rules, sans-io: plain synchronous code, driven by tests without sockets.

The trio code of node.jobs.requester and node.jobs.worker moves the bytes, runs the sandbox and
the ledger and keeps time; everything they decide by rule is here.
"""
