"""Long-tailed classification (``main_lt.py``), a peer of the continual-learning core.

One file per job, so that each can be read, tested and changed alone:

* ``data``: the benchmarks (CIFAR-10/100-LT, ImageNet-LT, Places-LT), their
  long-tailed profiles, presets and many / medium / few groups;
* ``batches``: how their images reach the device, for training and evaluation;
* ``losses``: the mixing rules and losses (arc-mixup, mixup, dot regression);
* ``arms``: the compared arms (``--method``), each a head and a loss;
* ``schedule``: SGD, the learning rate of each epoch, the evaluated epochs;
* ``metrics``: overall and many / medium / few accuracies;
* ``processes``: the torchrun set-up (ranks, devices, process group);
* ``trainer``: the run and its epochs - the protocol and nothing else;
* ``checkpoint``, ``callbacks``: what the trainer saves and reports;
* ``args``: the command line.

What the two stacks have in common is the core's, used here rather than
copied: backbones and heads (``backbone``: the registry's ``fc`` and ``fno``,
``simplex_etf``), the ``Network``, on-device transforms and normalisation
constants (``datasets.utils``), seeded streams (``utils.seeding``), autocast
(``utils.amp``), the parser's types and shared flags (``utils.cli``,
``utils.run_flags``), the entry point's error handling, output checks, run
lock and results writing (``utils.entry``), the checkpoint file machinery
(``utils.checkpoint``), and progress, wandb and checkpoint callbacks
(``utils.callbacks``, ``utils.progress``, ``utils.wandb_logger``).
Importing the package does nothing; the registries fill on first use.
"""
