"""The prompted ViT (prompt and prefix tuning by hooks on timm's network), L2P, DualPrompt and CODA-Prompt against
their definitions, checkpoints, and every method end to end on each 224-pixel benchmark (micro ViT, --debug_mode 1)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import main
from backbone.prompted_vit import Prompts
from models.coda_prompt import orthonormal_rows, ortho_penalty
from tests.fake_pretrained_data import write_cifar100, write_cub, write_imagenet_r
from utils.checkpoint import save_checkpoint
from utils.training import build_run, finish_stage, new_history, resume, stages, train_stage

MICRO = {"l2p": [], "dualprompt": ["--g_prompt_layers", "0", "--e_prompt_layers", "1"],
         "coda_prompt": ["--prompt_layers", "0,1", "--pool_size", "20"]}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("prompt-data"))
    write_imagenet_r(root, per_class=2)
    write_cub(root)
    write_cifar100(root, train_per_class=2)
    return root


def micro_run(make_args, root, model, *flags, dataset="seq-cifar100-224"):
    return build_run(make_args("--dataset", dataset, "--model", model, "--backbone", "vit-micro", "--data_path", root,
                               "--results_file", "none", "--batch_size", "4", *MICRO[model], *flags))


def test_prefix_tuning_adds_keys_and_values_to_the_attention(make_args, data_root):
    backbone = micro_run(make_args, data_root, "coda_prompt").model.backbone
    attn = backbone.net.blocks[1].attn
    h, keys, values = torch.randn(3, 5, 64), torch.randn(3, 4, 64), torch.randn(3, 4, 64)
    backbone._active = Prompts(prefixes={1: (keys, values)})
    try:
        out = attn(h)
    finally:
        backbone._active = None
    heads = lambda t: t.reshape(3, -1, 2, 32).transpose(1, 2)            # noqa: E731  B x heads x N x 32
    q, k, v = attn.qkv(h).split(64, dim=2)
    k, v = torch.cat([heads(keys), heads(k)], 2), torch.cat([heads(values), heads(v)], 2)
    mixed = ((heads(q) @ k.transpose(2, 3)) / 32 ** 0.5).softmax(-1) @ v
    torch.testing.assert_close(out, attn.proj(mixed.transpose(1, 2).reshape(3, 5, 64)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(h), attn.proj(  # without prompts the block is timm's own
        ((heads(q) @ heads(attn.qkv(h).split(64, 2)[1]).transpose(2, 3)) / 32 ** 0.5).softmax(-1)
        .matmul(heads(attn.qkv(h).split(64, 2)[2])).transpose(1, 2).reshape(3, 5, 64)), atol=1e-5, rtol=1e-5)


def test_prompt_tuning_inserts_tokens_after_the_class_token(make_args, data_root):
    run = micro_run(make_args, data_root, "l2p")
    backbone, x = run.model.backbone, run.transform.test(run.test.x[:2])
    net, tokens = backbone.net, torch.randn(2, 3, 64)
    with torch.no_grad():
        seq = net._pos_embed(net.patch_embed(x))
        seq = torch.cat([seq[:, :1], tokens + net.pos_embed[:, :1], seq[:, 1:]], 1)
        out = net.norm(net.blocks(seq))
        torch.testing.assert_close(backbone.prompted(x, Prompts(tokens=tokens, pool="prompt")),
                                   out[:, 1:4].mean(1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(backbone.prompted(x, Prompts(tokens=tokens)), out[:, 0], atol=1e-5, rtol=1e-5)


def test_query_pass_is_the_frozen_forward_and_its_cache_equals_it(make_args, data_root):
    run = micro_run(make_args, data_root, "l2p")
    backbone = run.model.backbone
    x = run.transform.test(run.test.x[:6])
    with torch.no_grad():
        direct = backbone.net(x)
    assert not any(p.requires_grad for p in backbone.net.parameters())
    backbone.eval()
    first = backbone.query(x[:4])
    both = backbone.query(x)
    assert backbone.cache.computed == 6                                  # 4, then the 2 new ones
    torch.testing.assert_close(both, direct, atol=1e-6, rtol=1e-5)
    assert torch.equal(both[:4], first)
    backbone.train()                                                     # training inputs are never cached
    torch.testing.assert_close(backbone.query(x), direct, atol=1e-6, rtol=1e-5)
    assert backbone.cache.computed == 6


def test_l2p_picks_the_k_closest_keys_and_its_key_loss_is_their_mean_distance(make_args, data_root):
    run = micro_run(make_args, data_root, "l2p", "--pool_size", "6", "--top_k", "2", "--prompt_length", "3",
                    "--key_weight", "0.5")
    pool = run.model.prompter
    query = torch.randn(4, 64)
    prompts = pool(query)
    cos = F.normalize(query, dim=1) @ F.normalize(pool.keys, dim=1).T
    best = cos.argsort(1, descending=True)[:, :2]
    for b in range(4):
        expected = torch.cat([pool.prompts[best[b, 0]], pool.prompts[best[b, 1]]])
        chosen = {tuple(t.tolist()) for t in prompts.tokens[b].reshape(2, 3, 64).flatten(1)}
        assert chosen == {tuple(pool.prompts[i].flatten().tolist()) for i in best[b].tolist()}
        assert expected.shape == prompts.tokens[b].shape
    distance = (1 - cos.gather(1, best)).sum(1).mean()                    # sum over the k, mean over the batch
    torch.testing.assert_close(prompts.loss, 0.5 * distance)
    prompts.loss.backward()                                              # the loss pulls the chosen keys only
    unused = sorted(set(range(6)) - set(best.flatten().tolist()))
    assert all(pool.keys.grad[i].abs().sum() == 0 for i in unused)


def test_dualprompt_uses_the_task_prompt_in_training_and_the_matching_key_at_test(make_args, data_root):
    run = micro_run(make_args, data_root, "dualprompt")
    prompter = run.model.prompter
    with torch.no_grad():
        prompter.keys.copy_(torch.eye(10, 64))
    query = torch.zeros(3, 64)
    query[0, 7], query[1, 2], query[2, 4] = 1.0, 3.0, 0.5                 # closest keys: 7, 2, 4
    prompter.eval()
    prompts = prompter(query)
    for b, task in enumerate((7, 2, 4)):
        assert torch.equal(prompts.prefixes[1][0][b], prompter.e[task, 0, 0])  # block 1: E-prompt keys
        assert torch.equal(prompts.prefixes[1][1][b], prompter.e[task, 0, 1])  # and values
        assert torch.equal(prompts.prefixes[0][0][b], prompter.g[0, 0])        # block 0: the G-prompt
    prompter.train()
    prompter.task = 5
    prompts = prompter(query)
    assert all(torch.equal(prompts.prefixes[1][0][b], prompter.e[5, 0, 0]) for b in range(3))
    torch.testing.assert_close(prompts.loss, (1 - F.normalize(query, dim=1)[:, 5]).mean())  # key weight 1
    data = stages(run)[1]
    run.model.begin_task(1, data)                                         # task 2 starts from task 1's E-prompt
    assert torch.equal(prompter.e[1], prompter.e[0])


def test_coda_finished_components_get_no_gradient_and_orthogonal_ones_no_penalty(make_args, data_root):
    run = micro_run(make_args, data_root, "coda_prompt", "--ortho_weight", "0.1")
    model, prompter = run.model, run.model.prompter
    assert prompter.per_task == 2
    first, second = stages(run)[:2]
    model.prepare_task(1)
    model.begin_task(1, second)                                          # draws task 2's components
    rows = prompter.keys[0, :4]
    torch.testing.assert_close(rows @ rows.T, torch.eye(4), atol=1e-5, rtol=0)  # orthonormal across tasks
    prompter.train()
    prompts = prompter(torch.randn(3, 64))
    assert float(prompts.loss.detach()) < 1e-8                                    # orthonormal components: no penalty
    with torch.no_grad():
        prompter.keys[0, 2] *= 2.0                                      # a current component off the unit sphere
    loss = prompter(torch.randn(3, 64)).loss
    assert float(loss.detach()) > 1e-3
    (loss + sum(p.sum() for p in prompter(torch.randn(3, 64)).prefixes[0])).backward()
    for param in (prompter.keys, prompter.attention, prompter.components):
        assert param.grad[:, :2].abs().sum() == 0                        # task 1's: finished, no gradient
        assert param.grad[:, 2:4].abs().sum() > 0                        # task 2's: trained
        assert param.grad[:, 4:].abs().sum() == 0                        # later tasks': not used yet
    prompter.eval()
    assert prompter(torch.randn(3, 64)).loss is None                     # test time: every seen component, no loss
    assert ortho_penalty(orthonormal_rows(torch.zeros(0, 8), 5, torch.Generator().manual_seed(0))) < 1e-10


def test_coda_cosine_schedule_is_the_authors(make_args, data_root):
    run = micro_run(make_args, data_root, "coda_prompt", "--n_epochs", "5", "--lr", "0.01")
    run.model.prepare_task(0)
    rates = []
    for _ in range(5):
        rates.append(run.model.opt.param_groups[0]["lr"])
        run.model.end_epoch()
    assert rates == pytest.approx([0.01 * math.cos(99 * math.pi * e / 800) for e in range(5)])
    assert isinstance(run.model.opt, torch.optim.Adam) and run.model.opt.defaults["betas"] == (0.9, 0.999)


def test_only_prompts_head_and_projection_are_trained(make_args, data_root):
    run = micro_run(make_args, data_root, "l2p", "--projection_dim", "100", "--classifier", "fno")
    model = run.model
    trained = {id(p) for p in model.trainable()}
    assert trained == {id(p) for p in [*model.prompter.parameters(), *model.net.head.parameters(),
                                       *model.backbone.vit.projection.parameters()]}
    net_before = {k: v.clone() for k, v in model.backbone.net.state_dict().items()}
    keys_before = model.prompter.keys.detach().clone()
    train_stage(run, stages(run)[0])
    assert all(torch.equal(v, model.backbone.net.state_dict()[k]) for k, v in net_before.items())
    assert not torch.equal(keys_before, model.prompter.keys)
    logits = model(run.transform.test(run.test.x[:3]))
    assert (logits[:, 10:] < -1e8).all() and (logits[:, :10] > -1e8).all()   # unseen classes never predicted


def test_checkpoint_resume_continues_exactly(make_args, data_root, tmp_path):
    flags = ("--max_steps_per_task", "2", "--ortho_weight", "0.1", "--n_tasks", "2")
    straight = micro_run(make_args, data_root, "coda_prompt", *flags)
    for data in stages(straight)[:2]:
        train_stage(straight, data)
    first = micro_run(make_args, data_root, "coda_prompt", *flags, "--checkpoint_dir", str(tmp_path))
    data = stages(first)[0]
    last_loss, _ = train_stage(first, data)
    history = new_history(first)
    finish_stage(first, data, 0, 2, history, last_loss, lambda *a: None)
    save_checkpoint(str(tmp_path), first, history, {"step": 0, "run_id": None})
    again = micro_run(make_args, data_root, "coda_prompt", *flags, "--checkpoint_dir", str(tmp_path), "--resume")
    assert resume(again, lambda *a: None)[0]["stages_done"] == 1
    train_stage(again, stages(again)[1])
    expected = straight.model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in again.model.state_dict().items())


def test_refusals_are_one_line(make_args, capsys):
    for flags in (["--model", "l2p", "--backbone", "resnet18-imagenet"],
                  ["--model", "l2p", "--top_k", "11"],
                  ["--model", "dualprompt", "--pool_size", "5"],
                  ["--model", "coda_prompt", "--prompt_length", "1"]):
        with pytest.raises(SystemExit):
            make_args("--dataset", "seq-cub200", "--pretrained", "none", *flags)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flags[-1] in err


BENCHMARKS = ("seq-imagenet-r", "seq-cub200", "seq-cifar100-224")
HEADS = {"l2p": ("fno", "cosine", "fc"), "dualprompt": ("fc", "fno", "etf"), "coda_prompt": ("etf", "orth", "fno")}


@pytest.mark.parametrize("model, dataset, head", [(m, d, h) for m in HEADS for d, h in zip(BENCHMARKS, HEADS[m])])
def test_every_method_runs_on_every_benchmark(data_root, model, dataset, head, tmp_path):
    out = tmp_path / "r.json"
    fixed = ["--projection_dim", "200", "--feature_activation", "relu"] if head in ("fno", "etf", "orth") else []
    assert main.main(["--dataset", dataset, "--model", model, "--backbone", "vit-micro", "--debug_mode", "1",
                      "--n_tasks", "2", "--data_path", data_root, "--device", "cpu", "--results_file", str(out),
                      "--nowand", "1", "--classifier", head, "--masked_softmax", "1", "--batch_size", "4",
                      *MICRO[model], *fixed]) == 0
    results = json.loads(out.read_text())
    assert len(results["acc_matrix_class_il"]) == 2 and results["partial"]


def test_pretrained_file_weights_are_the_query_and_prompted_network(make_args, data_root, tmp_path):
    source = micro_run(make_args, data_root, "dualprompt", "--seed", "3").model.backbone.net
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    run = micro_run(make_args, data_root, "dualprompt", "--pretrained", str(path))
    net = run.model.backbone.net
    assert not torch.equal(micro_run(make_args, data_root, "dualprompt").model.backbone.net.cls_token,
                           source.cls_token)                             # another seed: other random weights
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in net.state_dict().items())
    x = run.transform.test(run.test.x[:2])
    with torch.no_grad():
        torch.testing.assert_close(run.model.backbone.query(x), source(x))
