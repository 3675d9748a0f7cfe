"""The local panel (to come): a web page on 127.0.0.1, token-protected, and `rain top`.

This room will hold the ASGI app served on the node's trio loop and its static page: every
node this one sees as a small front panel of status lights and a load bar, our jobs and those we
run for others, and this node's contribution and credit over time. It reads the same snapshot
of the node that `rain status` and `rain peers` read (node.snapshot), as deltas each second.
"""
