"""rainnet's networking: identity, wire protocol, libp2p host, DHT records, discovery, membership.

Only the modules that talk to the network import libp2p; identity, the wire codec and the record
format are plain Python so the CLI stays fast.
"""

__version__ = "0.1.0"
