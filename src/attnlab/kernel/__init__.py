"""The tiled kernel: forward (``attnlab.flash`` until the kernel package holds it) and backward."""
