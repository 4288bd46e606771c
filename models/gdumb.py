import math

import numpy as np
import torch
import torch.nn.functional as F

from models import register_model
from models.continual_model import ContinualModel
from utils.buffer import ClassBalancedBuffer
from utils.cli import Flag, binary, bounded, non_negative, positive
from utils.seeding import make_generator

GRAD_CLIP = 10.0  # GDumb's code clips the gradient norm at 10 on every step ("always be safe")
# GDumb's published recipe (the paper and its code's defaults); GDumb takes no step with --lr.
PAPER_RECIPE = dict(lr=0.05, n_epochs=1, maxlr=0.05, minlr=0.0005, fitting_epochs=256, cutmix_alpha=1.0,
                    optim_mom=0.9, optim_wd=1e-6)


def cutmix(x: torch.Tensor, alpha: float, rng: np.random.Generator, perm: torch.Tensor):
    """Paste a random box of the permuted batch into ``x`` (in place); returns the kept area's fraction.

    The box's area fraction is 1 - lam with lam ~ Beta(alpha, alpha), its centre uniform over the
    image and its sides clipped at the borders (GDumb's and Mammoth's ``cutmix_data``); the
    returned fraction is the exact one after clipping.  Every draw is a host scalar: no sync.
    """
    height, width = x.shape[-2:]
    cut = math.sqrt(1.0 - rng.beta(alpha, alpha))
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
    return 1.0 - (bottom - top) * (right - left) / (height * width)


@register_model("gdumb")
class GDumb(ContinualModel):
    """GDumb (Prabhu et al., ECCV 2020): a greedy class-balanced memory and a network trained from
    scratch on the memory alone.

    The stream only fills the memory (``ClassBalancedBuffer.add``: a sample
    enters while its class holds fewer than buffer_size // classes-seen
    entries, replacing a random entry of the largest class once full); no
    gradient step is taken on it, so ``--lr`` is not used.  Whenever a model is
    needed (after every task with ``--fit_every_task 1``, as the paper trains
    one at each inference; after the last task only with 0, as Mammoth), the
    network is re-initialised as a fresh build (``reinitialise_network``, from
    its own seeded stream) and trained on the memory for ``--fitting_epochs``:
    SGD (``--optim_mom``, ``--optim_wd``) whose first epoch runs at
    ``maxlr / 10``, then SGDR between ``--maxlr`` and ``--minlr`` (cosine with
    warm restarts after 1, 2, 4, ... epochs), cutmix with probability
    ``--cutmix_prob`` and Beta(``--cutmix_alpha``) box sizes, the gradient norm
    clipped at 10, batches of ``--batch_size`` with the dataset's augmentation.
    It fills its memory in one pass, so ``--n_epochs`` must be 1 (Mammoth forces
    it), and its offline training on a balanced memory has no stream batch to
    mask, so ``--masked_softmax 1`` is refused.
    """

    USES_BUFFER = True
    NEEDS_BOUNDARIES = True  # retrains from scratch at every task's end
    USES_LR = False  # the retraining runs from --maxlr to --minlr; no step is taken with --lr
    FLAGS = {
        "maxlr": Flag(positive(float), 0.05, "gdumb: peak learning rate of the retraining"),
        "minlr": Flag(non_negative(float), 0.0005, "gdumb: lowest learning rate of the retraining's cosine cycles"),
        "fitting_epochs": Flag(positive(int), 256, "gdumb: epochs of training on the memory (the paper: 256)"),
        "cutmix_alpha": Flag(non_negative(float), 1.0,
                             "gdumb: Beta(alpha, alpha) of the cutmix box size; 0: no cutmix"),
        "cutmix_prob": Flag(bounded(float, 0, 1), 0.5, "gdumb: probability of cutmix for a batch (GDumb's code)"),
        "optim_mom": Flag(bounded(float, 0, 1), 0.0, "SGD momentum of the retraining (Mammoth's --optim_mom)"),
        "optim_wd": Flag(non_negative(float), 0.0, "SGD weight decay (Mammoth's --optim_wd)"),
        "fit_every_task": Flag(binary, 1, "gdumb: 1 retrains after every task (a model at each evaluation, as the "
                                          "paper); 0 after the last task only (Mammoth)", metavar="{0,1}"),
    }
    # --load_best_args: dataset -> buffer size -> flags.  lr is not used (see above).
    # seq-cifar100: Mammoth's table (utils/best_args.py, the X-DER paper's protocol), buffers 500 and 2000.
    # seq-mnist, seq-cifar10, seq-tinyimg: none published (Mammoth's gdumb.yaml only sets lr: 0 for
    #   seq-cifar10 at 500, i.e. GDumb's defaults); these rows are the paper's recipe (SGD momentum 0.9,
    #   weight decay 1e-6, 256 epochs, lr 0.05 to 0.0005, cutmix) and n_epochs 1.
    # seq-digits: this project's own choice (small sweep, tests/test_methods_b.py's module docstring).
    BEST_ARGS = {
        "seq-cifar100": {500: dict(PAPER_RECIPE, fitting_epochs=250),
                         2000: dict(PAPER_RECIPE, fitting_epochs=250, optim_mom=0.0)},
        "seq-mnist": {b: dict(PAPER_RECIPE) for b in (200, 500, 5120)},
        "seq-cifar10": {b: dict(PAPER_RECIPE) for b in (200, 500, 5120)},
        "seq-tinyimg": {b: dict(PAPER_RECIPE) for b in (200, 500, 5120)},
        "seq-digits": {b: dict(PAPER_RECIPE, fitting_epochs=128) for b in (50, 200, 500)},
    }

    NO_MASKING = ("trains offline on its class-balanced memory, with no stream batch whose other tasks' classes could "
                  "be masked")

    @classmethod
    def check_args(cls, args, n_tasks: int, domain_il: bool) -> None:
        super().check_args(args, n_tasks, domain_il)
        if args.n_epochs != 1:
            raise ValueError(f"--model gdumb passes over the stream once to fill its memory (Mammoth forces one "
                             f"epoch); got --n_epochs {args.n_epochs}: use --n_epochs 1")

    def __init__(self, net, args, setting):
        super().__init__(net, args, setting)
        # the last task trained (--n_tasks may stop the stream early): where the stream ends
        self.last_task = (getattr(args, "n_tasks", None) or setting.n_tasks) - 1
        self.fit_generator = make_generator(args.seed, "gdumb", setting.device)
        self.zero = torch.zeros((), device=setting.device)

    def build_buffer(self):
        return ClassBalancedBuffer(self.args.buffer_size, len(self.setting.task_of_class), self.setting.device,
                                   self.setting.buffer_generator)

    def build_scheduler(self, opt):
        return None  # no step is taken on the stream, so there is no schedule to follow

    def generators(self) -> dict:
        return {**super().generators(), "gdumb": self.fit_generator}

    def build_optimizer(self):
        """None: no step is taken on the stream (the retraining builds its own optimizer)."""
        return None

    def observe(self, inputs, labels, not_aug_inputs):
        self.buffer.add(examples=not_aug_inputs, labels=labels)
        return self.zero

    def end_task(self, task, data):
        if self.args.fit_every_task or task == self.last_task:
            self.reinitialise_network(self.fit_generator)
            self.fit_memory()

    def fit_memory(self) -> None:
        """Train the (re-initialised) network on the memory alone, with GDumb's schedule and cutmix."""
        args, n = self.args, len(self.buffer)  # one synchronisation per retraining
        examples, labels = self.buffer.fields["examples"][:n], self.buffer.fields["labels"][:n]
        opt = torch.optim.SGD(self.net.parameters(), lr=args.maxlr, momentum=args.optim_mom,
                              weight_decay=args.optim_wd)
        restarts = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2, eta_min=args.minlr)
        # cutmix's scalars come from a NumPy stream seeded from the method's own one: host draws, no sync
        rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (), device=self.device,
                                                      generator=self.fit_generator)))
        was_training = self.net.training
        self.net.train()
        for epoch in range(args.fitting_epochs):
            if epoch <= 1:  # a warm-up epoch at a tenth of the peak, then the peak, then the cosine cycles
                for group in opt.param_groups:
                    group["lr"] = args.maxlr * (0.1 if epoch == 0 else 1.0)
            else:
                restarts.step()
            order = torch.randperm(n, device=self.device, generator=self.fit_generator)
            batches = list(order.split(args.batch_size))
            if self.bn_layers and len(batches) > 1 and len(batches[-1]) == 1:
                batches[-2:] = [torch.cat(batches[-2:])]  # batch norm cannot normalise a single sample
            for idx in batches:
                self.fit_step(opt, self.setting.augment(examples[idx]), labels[idx], rng)
        self.net.train(was_training)

    def fit_step(self, opt, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> None:
        opt.zero_grad(set_to_none=True)
        if self.args.cutmix_alpha > 0 and rng.random() < self.args.cutmix_prob:
            perm = torch.randperm(len(y), device=self.device, generator=self.fit_generator)
            lam = cutmix(x, self.args.cutmix_alpha, rng, perm)
            self.backward(lambda: self.mixed_loss(x, y, y[perm], lam))
        else:
            self.backward(lambda: F.cross_entropy(self.net(x), y))
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), GRAD_CLIP)
        opt.step()

    def mixed_loss(self, x, y_a, y_b, lam):
        """Cutmix's loss: cross-entropy to both labels, weighted by their areas."""
        logits = self.net(x)
        return lam * F.cross_entropy(logits, y_a) + (1 - lam) * F.cross_entropy(logits, y_b)
