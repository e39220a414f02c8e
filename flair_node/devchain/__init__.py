"""``flair-node localnet``: a development Solana chain. ``chain`` runs transactions in LiteSVM and keeps their
ledger on disk; ``server`` serves it as a validator's JSON-RPC on 127.0.0.1. Production layers never import it:
a node reaches it over HTTP like any other chain RPC."""
