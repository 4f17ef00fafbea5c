r"""Low-memory optimizer state, defined once, in readable torch code: what ``state_precision`` means.

Modules, one per concern:

* :mod:`.codes`: the code maps (which number each 8- or 4-bit code stands for);
* :mod:`.blockwise`: block-wise absmax quantization, and how the maximum is kept from decreasing;
* :mod:`.rounding`: float32 to bfloat16 to nearest, up, and stochastically, with counter-based
  random bits;
* :mod:`.formats`: the formats that ``state_precision`` names, and why these maps;
* :mod:`.state`: one parameter's storage, and its moments in and out of it;
* :mod:`.step`: the reference compressed step, which the C kernels reproduce bit for bit.

Example — the stored maximum of AMSGrad never decreases, even when a block's scale jumps:

    >>> import torch, amsgrad
    >>> from amsgrad.quantization.state import float_moments
    >>> w = torch.nn.Parameter(torch.zeros(8192))
    >>> opt = amsgrad.AMSGrad([w], lr=1e-3, state_precision="int4")
    >>> previous = torch.zeros(8192)
    >>> ok = True
    >>> for step in range(20):
    ...     w.grad = torch.randn(8192) * (1e3 if step == 10 else 1.0)
    ...     _ = opt.step()
    ...     decoded = float_moments(opt.state[w], w)["max_exp_avg_sq"]
    ...     ok = ok and bool((decoded >= previous).all())
    ...     previous = decoded
    >>> ok, sorted(key for key in opt.state[w] if key.startswith("max"))
    (True, ['max_exp_avg_sq_codes', 'max_exp_avg_sq_scales'])
"""
