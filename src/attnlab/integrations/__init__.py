"""attnlab inside other frameworks. Each submodule imports its framework only when it is imported itself:

- ``attnlab.integrations.torch``: a PyTorch autograd bridge, so a CPU model trains on attnlab's tiled kernel.
- ``attnlab.integrations.flex``: masks and score modifiers to and from PyTorch FlexAttention.
- ``attnlab.integrations.hf``: attnlab as a Hugging Face transformers attention implementation, with recording.

``import attnlab`` never imports any of them.
"""
