"""The network simulator (issue 18): the node's own sans-io cores, thousands of them, driven by a
discrete-event loop in virtual time (sim.world), over a modelled transport and DHT
(sim.kademlia). `bench/bench_scale.py` prints its figures; tests/test_sim.py checks its
invariants at small sizes."""
