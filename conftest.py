"""Shared by every folder of tests/.

Running Solana programs in LiteSVM in this process (tests/onchain, localnet servers run in-process) leaves its
floating-point state changed in a way no later reset undid here (measured: numpy's long double ``ldexp`` then
reports an invalid operation, so importing scipy fails). scipy computes that constant when it is first
imported, so it is imported here, before any test runs. Daemons never run LiteSVM: ``flair-node localnet`` is a
process of its own.
"""

import scipy.stats  # noqa: F401  (see above)

from flair_node.network.host import apply_process_defaults

# Tests start libp2p hosts in this process, and the daemons they spawn inherit its environment: py-libp2p's
# process-wide tuning, as `flair-node run` applies it.
apply_process_defaults()
