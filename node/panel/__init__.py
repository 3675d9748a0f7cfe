"""The local panel: a web page on 127.0.0.1, token-protected; `rain top`; a hardware front panel.

Every node this one sees as a small front panel of status lights and a load bar, our jobs and
those we run for others, MPI groups, and this node's contribution and credit over time. It reads
the same snapshot of the node that `rain status` and `rain peers` read (node.snapshot), and acts
only through the control operations the node hands it. One module per concept:
- `lights`: this node's lights (user 1 and 2, too hot, load), which its signed record carries;
- `view`: the panel's view of a snapshot, and the delta between two; `plot`: the credit plot;
- `hub`: a view a second, as deltas, to every open page (none when no page is open);
- `guard`: who gets in (the token, Host, Origin); `access`: the token and address in the home;
- `app`: the ASGI app (Starlette) and `static/`, the page; `server`: hypercorn's trio worker in
  the node's nursery, bound at start-up, loaded at the first connection;
- `front`, `i2c`: the hardware front panel's driver, its I2C bus, and a fake bus for tests.
"""
