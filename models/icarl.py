import torch
import torch.nn.functional as F

from models import register_model
from models.sigmoid_distillation import SigmoidDistillation
from utils.buffer import ClassBalancedBuffer
from utils.cli import Flag, binary


def herding(features: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor, m: int) -> torch.Tensor:
    """iCaRL's herding, for every class in ``classes`` at once: the indices of up to ``m`` rows per class.

    Step i picks the row whose feature f makes the running mean of the picked
    rows, (f + sum of the i picked) / (i + 1), closest to the class mean mu (of
    the class's ``features`` as given, already L2-normalised by the caller);
    a row is picked once.  Returned in pick order, step-major (every class's
    first pick, then every class's second, ...); a class with fewer than ``m``
    rows gives all of them.  The loop runs ``m`` steps of batched tensor work
    over the classes: no per-sample Python and no synchronisation inside.
    """
    which = (labels.unsqueeze(1) == classes.unsqueeze(0)).float().argmax(1)  # position of each row's class
    c, dim = len(classes), features.shape[1]
    counts = torch.bincount(which, minlength=c)
    width = int(counts.max())                                  # once per call
    order = torch.argsort(which, stable=True)
    start = torch.cumsum(counts, 0) - counts
    col = torch.arange(len(order), device=features.device) - start[which[order]]
    padded = features.new_zeros(c, width, dim)
    padded[which[order], col] = features[order]
    row_of = torch.full((c, width), -1, dtype=torch.long, device=features.device)
    row_of[which[order], col] = order
    taken = row_of < 0                                         # padding is never picked
    mean = padded.sum(1) / counts.clamp(min=1).unsqueeze(1)
    norms = (padded * padded).sum(2)
    running = torch.zeros_like(mean)
    every = torch.arange(c, device=features.device)
    picks = []
    for i in range(m):
        # ||mu - (f + S)/(i+1)|| is smallest where ||(i+1) mu - S - f||^2 = |f|^2 - 2 f.t + |t|^2 is
        target = (i + 1) * mean - running
        cost = norms - 2 * torch.bmm(padded, target.unsqueeze(2)).squeeze(2)
        best = cost.masked_fill(taken, float("inf")).argmin(1)
        picks.append(torch.where(taken[every, best], -1, row_of[every, best]))  # -1: the class ran out
        running = running + padded[every, best]
        taken[every, best] = True
    picks = torch.stack(picks).flatten()
    return picks[picks >= 0]                                   # once per call


@register_model("icarl")
class ICaRL(SigmoidDistillation):
    """iCaRL (Rebuffi et al., CVPR 2017), as the paper and Mammoth's ``icarl``.

    Training: every class seen so far has a sigmoid, trained with binary
    cross-entropy whose targets are one-hot labels for the current task's
    classes and the previous network's sigmoid outputs for earlier classes
    (distillation), on the task's data together with the stored exemplars
    (each exemplar once per epoch, spread evenly over the epoch's batches and
    augmented like the stream).  By default (``--icarl_merge 1``) the samples go
    through steps of ``--batch_size``, as in Mammoth's (and the paper's)
    training set merged with the exemplars: ceil((N + M) / batch) steps per
    epoch (the results' ``n_steps`` still counts stream batches); with
    ``--icarl_merge 0`` each stream batch carries its share of exemplars, so an
    epoch has as many steps as without them (3 points lower Class-IL on
    digits-as-MNIST, docs/fidelity.md).
    Memory: at the end of each task every class keeps m = buffer_size //
    classes-seen exemplars: earlier classes their first m (herding order), the
    task's classes m chosen by herding on L2-normalised features
    (``ClassBalancedBuffer``).  Evaluation: nearest mean of exemplars, the
    score of class y being -||phi(x) - mu_y||^2 with phi(x) and mu_y (the mean
    of its exemplars' normalised features) L2-normalised; classes without
    exemplars score -inf.  The previous network is a frozen copy kept in eval
    mode; it and the class means are part of the state dict (checkpoints).
    There is no softmax, so ``--masked_softmax 1`` is refused.  Unlike
    Mammoth's current code the loss leaves out later tasks' classes (the
    paper's network has no outputs for them yet) and the class means do not
    average in horizontally flipped exemplars (the paper's do not); ``--icarl_all_classes 1``
    takes the loss over all classes as Mammoth's current code.
    """

    USES_BUFFER = True
    FLAGS = {
        **SigmoidDistillation.FLAGS,
        "icarl_merge": Flag(binary, 1, "icarl: 1 trains on the task's data merged with the exemplars in batches of "
                                       "--batch_size (Mammoth, the paper: more steps per epoch); 0 adds each "
                                       "exemplar to one stream batch per epoch", metavar="{0,1}"),
        "icarl_all_classes": Flag(binary, 0, "icarl: 1 takes the BCE over all classes, later tasks' with target 0 "
                                             "(Mammoth master); 0 over the classes seen so far (the paper)",
                                  metavar="{0,1}"),
    }
    # --load_best_args: dataset -> buffer size -> flags.
    # seq-mnist, seq-cifar10, seq-tinyimg: Mammoth's table (utils/best_args.py, the DER paper's grid);
    #   every seq-cifar10 row has optim_wd 1e-5 (lr 0.03 at 5120).
    # seq-cifar100: Mammoth's table (the X-DER paper's protocol), buffers 500 and 2000.
    # seq-digits: this project's own choice (small sweep, tests/test_methods_b.py's module docstring).
    BEST_ARGS = {
        "seq-mnist": {b: dict(lr=0.1, optim_wd=0.0) for b in (200, 500, 5120)},
        "seq-cifar10": {200: dict(lr=0.1, optim_wd=1e-5), 500: dict(lr=0.1, optim_wd=1e-5),
                        5120: dict(lr=0.03, optim_wd=1e-5)},
        "seq-tinyimg": {b: dict(lr=0.03, optim_wd=1e-5) for b in (200, 500, 5120)},
        "seq-cifar100": {b: dict(lr=0.3, optim_wd=1e-5) for b in (500, 2000)},
        "seq-digits": {b: dict(lr=0.3, optim_wd=1e-5) for b in (50, 200, 500)},
    }

    NO_MASKING = ("trains one sigmoid per class with binary cross-entropy and classifies by the nearest mean of "
                  "exemplars: there is no softmax to mask")
    NEEDS_NEW_CLASSES = "adds new classes with every task"

    def __init__(self, net, args, setting):
        super().__init__(net, args, setting)
        num_classes = len(setting.task_of_class)
        self.register_buffer("class_means", torch.zeros(num_classes, net.backbone.feature_dim, device=setting.device))
        self.register_buffer("has_mean", torch.zeros(num_classes, dtype=torch.bool, device=setting.device))
        self.n_exemplars = 0      # exemplars replayed during this task (fixed at its start)
        self.steps_per_epoch = 1
        self.step = 0             # within the epoch
        self.exemplar_order = None
        self.pending = None       # --icarl_merge 1: samples of this epoch not yet in a step (inputs, labels)
        self.last_loss = torch.zeros((), device=setting.device)

    def build_buffer(self):
        return ClassBalancedBuffer(self.args.buffer_size, len(self.setting.task_of_class), self.setting.device,
                                   self.setting.buffer_generator)

    def begin_task(self, task, data):
        super().begin_task(task, data)
        if self.args.icarl_all_classes:  # Mammoth master: later tasks' classes too, with targets 0
            task_of_class = self.setting.task_of_class
            self.columns = torch.arange(len(task_of_class), device=self.device)
            self.old_column = task_of_class < task
        self.n_exemplars = len(self.buffer)
        batches = -(-len(data) // self.args.batch_size)
        if self.bn_layers and batches > 1 and len(data) % self.args.batch_size == 1:
            batches -= 1  # the trainer joins a last single sample to the batch before
        self.steps_per_epoch = batches
        self.new_epoch()

    def new_epoch(self) -> None:
        self.step = 0
        self.pending = None  # only left over when --max_steps_per_task cut the epoch short
        if self.n_exemplars:
            self.exemplar_order = torch.randperm(self.n_exemplars, device=self.device,
                                                 generator=self.setting.buffer_generator)

    def end_epoch(self) -> None:
        super().end_epoch()
        self.new_epoch()

    def exemplar_batch(self):
        """This step's share of the epoch's exemplars: every exemplar once per epoch, evenly spread."""
        lo = self.step * self.n_exemplars // self.steps_per_epoch
        hi = (self.step + 1) * self.n_exemplars // self.steps_per_epoch
        self.step += 1
        if hi <= lo:
            return None
        idx = self.exemplar_order[lo:hi]
        return self.setting.augment(self.buffer.fields["examples"][idx]), self.buffer.fields["labels"][idx]

    def observe(self, inputs, labels, not_aug_inputs):
        if self.n_exemplars:
            extra = self.exemplar_batch()
            if extra is not None:
                inputs, labels = torch.cat((inputs, extra[0])), torch.cat((labels, extra[1]))
            if self.args.icarl_merge:
                return self.merged_steps(inputs, labels)
        return self.sgd_step(inputs, labels)

    def sgd_step(self, inputs, labels):
        self.opt.zero_grad(set_to_none=True)
        self.last_loss = self.backward(lambda: self.distillation_loss(inputs, labels))
        self.opt.step()
        return self.last_loss

    def merged_steps(self, inputs, labels):
        """``--icarl_merge 1``: the epoch's stream samples and exemplars (every exemplar once, in this step's
        share) go through steps of ``--batch_size`` samples, so an epoch takes ceil((N + M) / batch) steps
        as Mammoth's merged data set; the samples in hand are shuffled (buffer generator) and what does not
        fill a batch waits for the next call, until the epoch's last stream batch, which empties it (a last
        single sample joins the batch before under batch norm, as the trainer's batches)."""
        if self.pending is not None:
            inputs, labels = torch.cat((self.pending[0], inputs)), torch.cat((self.pending[1], labels))
        order = torch.randperm(len(labels), device=self.device, generator=self.setting.buffer_generator)
        chunks = list(order.split(self.args.batch_size))
        if self.step < self.steps_per_epoch and len(chunks[-1]) < self.args.batch_size:
            rest = chunks.pop()
            self.pending = inputs[rest], labels[rest]
        else:
            self.pending = None
            if self.bn_layers and len(chunks) > 1 and len(chunks[-1]) == 1:
                chunks[-2:] = [torch.cat(chunks[-2:])]
        for idx in chunks:
            self.sgd_step(inputs[idx], labels[idx])
        return self.last_loss

    @torch.no_grad()
    def features(self, x: torch.Tensor, prepare) -> torch.Tensor:
        """L2-normalised features of raw inputs ``x`` (non-augmented), in eval mode, batch by batch."""
        was_training = self.net.training
        self.net.eval()
        out = []
        for chunk in x.split(self.setting.eval_batch_size):
            with self.autocast():
                out.append(self.net(prepare(chunk), return_features=True)[1].float())
        self.net.train(was_training)
        return F.normalize(torch.cat(out), dim=1)

    def end_task(self, task, data):
        super().end_task(task, data)
        self.update_memory(task, data)
        self.compute_class_means(data.prepare)

    def update_memory(self, task, data) -> None:
        """Keep m = buffer_size // classes-seen exemplars per class; the task's own chosen by herding."""
        task_of_class = self.setting.task_of_class
        per_class = self.buffer.size // int((task_of_class <= task).sum())
        self.buffer.shrink(per_class)
        classes = torch.nonzero(task_of_class == task).flatten()
        rows = herding(self.features(data.x, data.prepare), data.y, classes, per_class)
        quota = torch.full((len(task_of_class),), per_class, device=self.device)
        x, y = data.take(rows)
        self.buffer.add_balanced(quota, examples=x, labels=y)

    def compute_class_means(self, prepare) -> None:
        """Each stored class's mean of normalised exemplar features, normalised again."""
        n = len(self.buffer)
        labels = self.buffer.fields["labels"][:n]
        feats = self.features(self.buffer.fields["examples"][:n], prepare)
        sums = torch.zeros_like(self.class_means).index_add_(0, labels, feats)
        self.class_means.copy_(F.normalize(sums, dim=1))
        self.has_mean.copy_(torch.bincount(labels, minlength=len(self.has_mean)) > 0)

    def forward(self, x):
        """Nearest mean of exemplars: -||phi(x) - mu_y||^2 per class (normalised), -inf where no exemplar."""
        feats = F.normalize(self.net(x, return_features=True)[1].float(), dim=1)
        dist = torch.cdist(feats, self.class_means).pow(2)
        return (-dist).masked_fill(~self.has_mean, float("-inf"))
