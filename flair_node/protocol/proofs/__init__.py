"""Proofs that an aggregator merged correctly (EZKL), bound to what each contributor published.

``ezkl_backend`` is the only module that touches EZKL: a circuit proving ``Σ w_i · d_i`` over hashed inputs
and outputs. ``weighted_sum`` is Flair's side: deltas in the merge's fixed point, cut into chunks and committed
with Poseidon, proofs per chunk, the check that a proof's public values are exactly the published commitments
and the recorded weights, and the sampling of chunks to prove for models too big to prove whole.
"""
