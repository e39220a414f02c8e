"""Python SDK for local training: pull weights, train in your own process, commit the result.

    from flair_node.sdk import Repo
    repo = Repo.connect(home, repo_id)
    state = repo.pull("main")
    model.load_state_dict(state); train(model)          # your data never leaves this process
    repo.commit(model, message="one epoch on site A", examples=1200, metrics={"acc": 0.91})

The SDK talks to the daemon through its JSON-RPC API, exchanging weights as safetensors files in the node
home's private ``tmp`` folder.
"""

from ..tensors.lossy import ErrorFeedback as ErrorFeedback
from ._repo import Repo as Repo

__all__ = ["ErrorFeedback", "Repo"]
