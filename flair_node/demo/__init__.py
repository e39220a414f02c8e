"""``flair-node demo``: a small model trained by three contributors on one node (``single``), or by N daemons in
rounds with a rotating aggregator (``network``). Demos sit on top of every layer: they drive daemons through the
SDK and the test helpers, as a user would."""
