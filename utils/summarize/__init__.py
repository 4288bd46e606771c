"""The tables of a directory of results files: ``python -m utils.summarize DIR [--plots OUT] [--latex OUT.tex]``.

Continual-learning runs: one table per (benchmark, buffer size); rows (method,
head), columns final Class-IL / Task-IL accuracy, forgetting and backward
transfer in both settings; cells "mean ± std (n seeds)".  The method is the
model name with "+M" when the masked softmax was on; the head is the
classifier, with any head-owned flag that differs from its default (e.g.
``fno fno_scale=0``).  A cell holds one configuration: runs that differ in any
flag but the seed and the operational ones are different rows, the method
label showing the differing values (``er+M lr=0.01``), never averaged; a seed
twice in one configuration is an error (``configs``; ``--group_by`` /
``--ignore`` choose the defining flags).  Every head but FC, fixed or
learnable, is compared with FC in a paired row, e.g. "FNO - FC", pairing only
runs of otherwise identical configurations: runs with the same seed
share the data order, the initialisation of every shared layer and the buffer
draws, so the per-seed differences d_i = HEAD_i - FC_i over the seeds both have
are what is compared: their mean, its 95% confidence interval
mean ± t(0.975, n-1) * sd / sqrt(n), and the two-sided paired t-test's p-value
(Student's t from scipy.stats).

Long-tail runs (``"setting": "long-tail"``): one table per (dataset, imbalance
ratio); rows method, columns overall / many / medium / few-shot accuracy of the
final epoch (the headline) and of the best epoch, which was selected on the
test set.

``--select_on validation`` keeps, per configuration, the hyper-parameters with
the best mean validation Class-IL and reports their test accuracy.  Runs marked
``"partial": true`` (debug / smoke runs) are never mixed with full runs: they are
left out, or summarized apart with ``--include_partial``.

``--wandb ENTITY/PROJECT [--sweep ID]`` reads the same results from the
finished wandb runs instead (each run's summary keeps its results file, see
``utils.wandb_logger``), so runs spread over machines need no copying; the
tables go to DIR (default ``results/wandb/ENTITY-PROJECT[-ID]``).

Every ``*.json`` under DIR is read (``utils.summarize.results``); a file that cannot be
read, is not a results file or lacks a field is reported by name and left out.
The tables are printed at most 120 characters wide (wide metrics follow in a
second part; ``--columns`` picks the metrics printed) and written beside the results as ``summary.csv`` (one
numeric row per cell) and ``summary.md``.

The package: ``results`` (the one reader of results files), ``tables``
(statistics, tables, LaTeX), ``plots`` (the shared figure style),
``figures`` (the summary's plots), ``configs`` (which runs share a cell), ``command`` (this command) and
``collapse`` (``python -m utils.summarize.collapse``: runs' neural-collapse
metrics side by side).  No run imports this package: it reads what runs wrote.
"""
