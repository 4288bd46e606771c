"""Many seeds of one configuration trained in one process as one stacked model (``--seeds 1-10``).

Why: a CL table is hundreds of small runs (batch 10 MLP, batch 32 ResNet-18)
whose steps are too small to keep a device busy: the time goes to launching
kernels and to Python, not to arithmetic.  Stacking S runs makes every kernel
do S runs' work for about the overhead of one.

How: the seed-folded layout.  Seed s's activation of shape (N, C, ...) lives
in channels ``s*C .. (s+1)*C - 1`` of one (N, S*C, ...) tensor, so every layer
without parameters (ReLU, pooling, flatten, residual additions, BasicBlock's
own ``forward``) runs unchanged on all seeds at once, and only layers with
parameters are replaced (``stack_network``):

* ``nn.Conv2d``  -> one grouped convolution (``groups`` times S);
* ``nn.BatchNorm*`` -> one batch norm over S*C channels: batch statistics and
  running statistics are per channel, hence per seed;
* ``nn.Linear`` (the MLP's layers, the FC head) -> batched matmuls whose
  forward and gradients are computed as ``F.linear`` computes them for one
  seed (``SeedLinear``), bitwise equal on the CPU;
* fixed heads (FNO, ETF, orth) -> a batched matmul with each seed's own
  matrix and learnable scale.

Losses are per seed (each seed's mean over its own samples), summed before
``backward``: each seed's slice of the gradient is then exactly its own
gradient, and plain SGD on the stacked parameters is each seed's own update.

Each seed keeps every random stream of the single run with that seed: its
``Run`` is built by ``utils.training.build_run`` (initial weights, FNO
partition, data order, augmentation and buffer generators), the stacked
trainer draws from those generators with the same calls in the same order,
and after every task the stacked state is copied back into the seeds' own
networks and buffers, which are then evaluated, checkpointed and reported by
the single run's own functions.  The replay buffers are one stacked tensor
per field; the draws and counters stay in each seed's ``ReservoirBuffer``.

The method's math is written once: a stacked step runs the method's own
``observe`` on a ``Stack`` (``utils.stacked.method``), which holds the stacked
network, buffer and optimizer and supplies the per-seed forms of the loss
hooks (``cross_entropy``, ``mse``) that ``ContinualModel`` defines.

The package: ``layers`` (stacked layers), ``losses`` (per-seed losses),
``buffer`` (the stacked reservoir buffer), ``method`` (the ``Stack`` a method's
``observe`` runs on), ``trainer`` (the stages, the run, ``main.py --seeds``).
Supported: the methods of ``STACKED_METHODS``, the heads of ``HEADS`` and the
backbones of ``BACKBONES``; anything else is refused in one line
(``check_stackable``).  See docs/stacked.md for the measurements.
"""
