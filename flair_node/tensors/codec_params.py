"""Names and defaults of the tensor codecs, without torch: what storage and the API need to describe tensor work.

The modules beside this one import torch; this one imports nothing, so a daemon can validate a request, fill in
defaults and list the codecs before any tensor work loads torch (an idle node stays small: issue 4).
"""

from __future__ import annotations

#: Lossy delta codecs (``lossy``): a commit made with one holds exactly what its payload decodes to.
LOSSY_CODECS = ("float16-v1", "int8-v1", "topk-v1")
#: Share of each tensor's elements ``topk-v1`` keeps when the caller names none.
DEFAULT_TOPK_RATIO = 0.01
