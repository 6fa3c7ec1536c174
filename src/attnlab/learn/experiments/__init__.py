"""Experiments that show why: the seq2seq bottleneck, scaling by sqrt(d_k), additive vs dot, cost when n doubles."""


def check_run(out, quick, *, allow_none: bool = True):
    """The arguments every experiment's ``run`` takes: ``out`` a folder path (a str or os.PathLike; None: write
    nothing, where allowed) and ``quick`` True or False. Returns them checked, before any work starts."""
    import os

    from ...checks import flag

    if not (isinstance(out, (str, os.PathLike)) and str(out) or (out is None and allow_none)):
        raise TypeError(f"out must be a folder path{' or None' if allow_none else ''}, got {type(out).__name__} "
                        f"{out!r}"[:200])
    return out, flag(quick, "quick")
