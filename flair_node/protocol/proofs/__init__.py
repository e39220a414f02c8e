"""Proofs that an aggregator merged correctly (EZKL), bound to what each contributor published.

``ezkl_backend`` is the only module that touches EZKL: a circuit proving ``Σ w_i · d_i`` over committed inputs
and outputs (KZG or Poseidon). ``circuits`` finds the SRS and circuits a repository's policy names. ``weighted_sum``
is Flair's side: deltas in the merge's fixed point, cut into chunks and committed, proofs per chunk, the check that
the commitments a proof carries are exactly the published ones and the recorded weights, and the sampling of
chunks to prove for models too big to prove whole. ``worker`` proves in a child process with a memory cap.
"""
