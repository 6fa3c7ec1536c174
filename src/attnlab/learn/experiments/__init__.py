"""Experiments that show why: the seq2seq bottleneck, scaling by sqrt(d_k), additive vs dot, cost when n doubles."""
