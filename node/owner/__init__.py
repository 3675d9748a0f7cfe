"""Owner first: when this machine may lend itself to guests, and stepping aside at once when its
owner returns.

- `config`: the owner's lending policy (the `[policy]` table of `HOME/config.toml`), pure data;
- `policy`: the sans-io state machine that turns signals into a decision (lend, suspend, give
  jobs back), with the reason for the state it is in;
- `signals`: the I/O edge: samples input devices, load not caused by guests, battery,
  temperature, and drives the policy on trio.
"""
