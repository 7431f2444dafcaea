"""Continual 3D CNNs: one frame in, one result out, equal to the offline forward pass.

A 3D CNN trained on clips (``[B, C, T, H, W]``) is re-organised so that every new frame
(``[B, C, H, W]``) costs one frame's worth of work (Hedegaard & Iosifidis, *Continual 3D
Convolutional Neural Networks*, CoX3D). The pure core is
``step(frame, state, reset) -> (output, state)`` with all stream state explicit.

Semantics (checked against ``continual-inference`` 1.2.4, re-implemented here):

* ``CoConv3d``: ``y_t = b + Σ_j W_j·x_{t-k+1+j}``: each new frame meets every temporal
  kernel slice once (one output frame of work). The state keeps the last ``k`` input frames
  and the output is one ``conv3d`` over them (faster on CPU than the library's partial-sum
  buffer, same MACs). Temporal padding ``p`` only exists at stream start (zeros, or
  ``replicate``: the first frame repeated). The first output appears after
  ``delay = k-1-p`` frames; temporal stride ``s`` is a per-stream phase counter: an output
  every ``s`` steps, ``None`` in between (and no conv is run then).
* Sequential composition: ``delay = d_1 + s_1 * d_2``, ``stride = s_1 * s_2``.
* ``CoParallel`` / residual: branches with different delays are aligned with ``CoDelay``
  buffers automatically (a branch's output index ``n`` meets the other branches' index ``n``).
* Per-frame layers (BatchNorm in eval, activations, spatial-only convs and pools, dropout in
  eval) are applied to each frame unchanged.
* Clip-global operations have no streaming form. They become causal equivalents, and the
  offline network is then defined with those equivalents (so stepped == offline holds):
  squeeze-and-excitation over the whole clip → ``CausalSqueezeExcitation`` (mean over the
  last ``window`` frames, fewer at stream start); global temporal average pooling →
  ``SlidingGlobalAvgPool`` (mean over the last ``window`` frames).

Batches hold independent streams. ``reset[b]`` starts a new stream in row ``b`` at this
step. Rows whose module has no output this step (stride phase, warm-up after a reset) are
tracked with a per-stream mask; ``step`` returns ``None`` when no row has an output.

State is a tree of dicts/lists holding torch tensors (frame buffers) and numpy ``int64``
phase counters, every one with the stream (batch) as its first dimension, so states of
separate streams stack into one batch and split again (``stack_states``/``split_states``).
For speed the state passed to ``step`` is *consumed*: its buffers are updated in place and
returned (like JAX buffer donation); ``clone_state`` keeps a copy. ``state_to_numpy`` /
``state_from_numpy`` convert it for Beam state coders; ``map_state`` maps a function over
its leaves.

Deliberately unlike the library (bugs seen in 1.2.4): temporal dilation other than 1 is
rejected for convs and pools; a state whose batch size differs from the input raises
instead of broadcasting.

Modules: ``base`` (``CoModule``, phase counters), ``state`` (state trees), ``conv``,
``pooling``, ``delay``, ``per_frame``, ``containers`` (sequential/parallel),
``squeeze_excitation``, ``buffers`` (per-stream histories), ``convert`` (``from_module``,
``register_converter``, ``fuse``) and ``stepper`` (``StreamStepper``, numpy in and out).
"""
