"""Fast exact kernels for the VAE engine, and the ops that use them.

- :mod:`.subpixel`: nearest 2x upsample + 3x3 conv as one sub-pixel convolution
  (:class:`~.subpixel.SubPixelConv` replaces ``Seq([Upsample2x(), Conv(conv2d)])``);
- :mod:`.norm_act`: RMS norm + SiLU (+ the residual add before it) in one Triton kernel, with a
  torch path that gives the same results where Triton is missing or cannot run;
- :mod:`.fused`: :class:`~.fused.NormConv` (the norm writes into the causal conv's buffer) and
  :class:`~.fused.FusedResBlock` (its residual add deferred into the next norm);
- :mod:`.rewrite`: :func:`~.rewrite.accelerate_graph`, a copy of a decoder/encoder graph with
  those ops swapped in.
Exact like the ops they replace (tests/test_vae_kernels.py). On by default: decode and encode run their
cached graph rewritten (``RunOptions.kernels``; False runs the plain ops). bench/vae_kernels.py measures
both against ComfyUI's native VAE.
"""
