"""The vector quantizer: nearest codes, straight-through gradient, losses, EMA, k-means,
dead-code restart, and DDP-synchronised codebooks (2 CPU processes, gloo)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vaelab.quantizer import ResidualVectorQuantizer, VectorQuantizer, kmeans


def as_map(flat: torch.Tensor, height: int = 2) -> torch.Tensor:
    """Rows [N, D] -> z_e [N / (H*H), D, H, H] (rows in raster order)."""
    n, d = flat.shape
    return flat.view(n // height**2, height, height, d).permute(0, 3, 1, 2).contiguous()


def quantizer(**kwargs):
    defaults = dict(num_codes=8, code_dim=4, kmeans_init=False, restart_dead=False)
    return VectorQuantizer(**{**defaults, **kwargs})


def test_each_vector_goes_to_its_nearest_code():
    vq = quantizer().eval()
    codes = vq.codebook.clone()
    target = torch.randint(8, (32,))
    z_e = as_map(codes[target] + 0.01 * torch.randn(32, 4))
    z_q, out = vq(z_e)
    assert torch.equal(out["indices"].flatten(), target)
    torch.testing.assert_close(z_q, as_map(codes[target]))


def test_gradient_passes_straight_through_to_the_encoder():
    vq = quantizer().eval()
    z_e = torch.randn(2, 4, 2, 2, requires_grad=True)
    weights = torch.randn(2, 4, 2, 2)
    z_q, _ = vq(z_e)
    (z_q * weights).sum().backward()
    torch.testing.assert_close(z_e.grad, weights)


def test_losses_are_means_per_element_independent_of_batch_size():
    vq = quantizer(update="loss", beta=0.25).eval()
    z_e = torch.randn(3, 4, 2, 2)
    _, one = vq(z_e)
    _, doubled = vq(torch.cat([z_e, z_e]))
    torch.testing.assert_close(one["vq_loss"], doubled["vq_loss"])
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    nearest = vq.codebook[one["indices"].flatten()]
    expected = ((flat - nearest) ** 2).mean()
    torch.testing.assert_close(one["commitment"], expected)
    torch.testing.assert_close(one["vq_loss"], expected + 0.25 * expected)


def test_loss_update_trains_the_codebook_and_ema_does_not_need_gradients():
    vq = quantizer(update="loss").train()
    z_e = torch.randn(2, 4, 2, 2, requires_grad=True)
    _, out = vq(z_e)
    out["vq_loss"].backward()
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0
    assert not quantizer(update="ema").codebook.requires_grad


def test_ema_update_worked_by_hand():
    """2 codes in 1-D at 0 and 1, EMA counts 1 and sums equal to the codes, decay 0.75, epsilon
    0.75; a batch of 0.25 (nearest code 0) and 0.75, 1.25, 1.5 (nearest code 1):
      batch counts [1, 3], sums [0.25, 3.5]
      ema_counts = 0.75 [1, 1] + 0.25 [1, 3]        = [1, 1.5]
      ema_sums   = 0.75 [0, 1] + 0.25 [0.25, 3.5]   = [0.0625, 1.625]
      Laplace    (c + 0.75) / (2.5 + 2 * 0.75) * 2.5 = [1.09375, 1.40625]   (n = 2.5)
      codebook   = ema_sums / smoothed counts"""
    vq = quantizer(num_codes=2, code_dim=1, update="ema", decay=0.75, epsilon=0.75).train()
    vq.codebook.copy_(torch.tensor([[0.0], [1.0]]))
    vq.ema_sums.copy_(vq.codebook)
    vq(as_map(torch.tensor([[0.25], [0.75], [1.25], [1.5]])))
    torch.testing.assert_close(vq.ema_counts, torch.tensor([1.0, 1.5]))
    torch.testing.assert_close(vq.ema_sums, torch.tensor([[0.0625], [1.625]]))
    torch.testing.assert_close(vq.codebook, torch.tensor([[0.0625 / 1.09375], [1.625 / 1.40625]]))


def clustered(num_clusters=8, per_cluster=16, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_clusters, dim, generator=g) * 10
    points = centres.repeat_interleave(per_cluster, 0) + 0.1 * torch.randn(num_clusters * per_cluster, dim, generator=g)
    return centres, points


def test_kmeans_initialisation_puts_a_code_on_every_cluster():
    centres, points = clustered()
    found = kmeans(points, 8, iterations=20, generator=torch.Generator().manual_seed(1))
    assert torch.cdist(centres, found).min(1).values.max() < 5.0  # every cluster has a code near it
    vq = quantizer(kmeans_init=True, update="ema").train()
    _, out = vq(as_map(points))
    assert bool(vq.initialised) and out["codes_used"] >= 0.75


def test_dead_codes_are_restarted_from_encoder_outputs():
    vq = quantizer(update="ema", restart_dead=True, dead_threshold=0.5).train()
    vq.codebook.data[5:] = 1e3  # far from any data: never chosen
    vq.usage[5:] = 0.0
    z_e = torch.randn(4, 4, 2, 2)
    vq(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    for code in vq.codebook[5:]:
        assert torch.cdist(code[None], flat).min() < 1e-5  # re-seeded on an encoder output
    assert (vq.usage[5:] == 1.0).all()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rows", [4, 16])
def test_restarts_draw_distinct_encoder_outputs(rows, seed):
    """6 dead codes: with 16 encoder outputs each gets a different one; with 4, only 4 codes are
    restarted (one per output) and the other 2 stay dead until a later batch."""
    vq = quantizer(update="loss", restart_dead=True, dead_threshold=0.5, seed=seed).train()  # no EMA moves
    vq.codebook.data[2:] = 1e3  # far from any data: never chosen
    vq.usage[2:] = 0.0
    before = vq.codebook.detach().clone()
    z_e = torch.randn(rows // 4, 4, 2, 2, generator=torch.Generator().manual_seed(seed))
    vq(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    restarted = (vq.codebook[2:] != before[2:]).any(1).nonzero().squeeze(1) + 2
    assert len(restarted) == min(6, rows) and torch.equal(vq.restarted, restarted)
    source = torch.cdist(vq.codebook[restarted], flat).argmin(1)  # the output each code was seeded on
    torch.testing.assert_close(vq.codebook[restarted], flat[source], rtol=0, atol=0)
    assert len(source.unique()) == len(restarted)  # no two codes share an output
    assert (vq.usage[restarted] == 1.0).all() and vq.dead_codes() == 6 - len(restarted)


def test_cosine_codebook_and_low_dimensional_lookup():
    vq = quantizer(cosine=True, lookup_dim=2, code_dim=6).train()
    z_e = torch.randn(2, 6, 2, 2, requires_grad=True)
    z_q, _out = vq(z_e)
    assert z_q.shape == z_e.shape
    torch.testing.assert_close(vq.codes().norm(dim=1), torch.ones(8))
    z_q.sum().backward()
    assert z_e.grad is not None and vq.project_in.weight.grad is not None


def perplexity_bounds():
    vq = quantizer().eval()
    _, out = vq(torch.randn(8, 4, 2, 2))
    return out["perplexity"].item()


def test_perplexity_is_between_one_and_the_number_of_codes():
    assert 1.0 <= perplexity_bounds() <= 8.0
    vq = quantizer().eval()
    one_code = vq.codebook[3].expand(16, 4)
    _, out = vq(as_map(one_code))
    assert out["perplexity"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("training", [True, False])
def test_perplexity_and_codes_used_describe_the_global_batch(monkeypatch, training):
    """Under DDP both describe every process's vectors. A second process is simulated by adding
    its statistics in all_reduce_sum: here 4 vectors on code 0, there one each on codes 1-4, so the
    global counts are [4, 1, 1, 1, 1, 0, 0, 0]: probabilities 1/2 and 4 x 1/8, entropy
    1/2 log 2 + 4/8 log 8 = 2 log 2, perplexity 4; 5 of the 8 codes used (this process alone: 1, 1/8)."""
    vq = quantizer(update="ema").train(training)
    here, there = vq.codebook[[0, 0, 0, 0]].clone(), vq.codebook[[1, 2, 3, 4]].clone()

    def all_reduce_sum(t):
        indices = torch.tensor([1, 2, 3, 4])  # the other process's nearest codes
        counts = torch.bincount(indices, minlength=8).to(t.dtype)
        sums = torch.zeros(8, 4).index_add_(0, indices, there)
        # Counts alone, or counts beside the EMA sums (training's one all-reduce).
        return t.add_(counts if t.dim() == 1 else torch.cat([counts[:, None], sums], 1))

    monkeypatch.setattr("vaelab.quantizer.all_reduce_sum", all_reduce_sum)
    _, out = vq(as_map(here))
    assert out["perplexity"].item() == pytest.approx(4.0)
    assert out["codes_used"].item() == 5 / 8


# ---- DDP ------------------------------------------------------------------------------------
SETTINGS = dict(
    num_codes=16,
    code_dim=4,
    update="ema",
    decay=0.8,
    kmeans_init=True,
    kmeans_iterations=5,
    restart_dead=True,
    dead_threshold=0.9,
    usage_decay=0.5,
    seed=3,
)


def global_batches(steps=6):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, 4, 2, 2, generator=g) for _ in range(steps)]


def run_steps(vq, batches):
    """The codebook after training on ``batches``, and [perplexity, codes_used] of each training
    step and of an evaluation of the last batch."""
    stats = []
    for z_e in batches:
        _, out = vq(z_e)
        stats.append([out["perplexity"], out["codes_used"]])
    codebook = torch.cat([book.codebook for book in vq.codebooks()])  # every stage's, for the residual quantizer
    _, out = vq.eval()(batches[-1])
    stats.append([out["perplexity"], out["codes_used"]])
    return codebook, torch.tensor(stats)


def make_quantizer(kind: str) -> VectorQuantizer | ResidualVectorQuantizer:
    return VectorQuantizer(**SETTINGS) if kind == "vq" else ResidualVectorQuantizer(3, **SETTINGS)


def ddp_worker(rank: int, world: int, init_file: str, out_dir: str, kind: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # different global RNG on each process: the codebook must not depend on it
    vq = make_quantizer(kind).train()
    shares = [b.tensor_split(world)[rank] for b in global_batches()]
    torch.save(run_steps(vq, shares), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vq", "rvq"])
def test_ddp_codebooks_are_identical_across_ranks_and_equal_to_one_process(tmp_path, kind):
    mp.start_processes(
        ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), kind), nprocs=2, start_method="spawn"
    )
    (rank0, stats0), (rank1, stats1) = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0, rank1)
    assert torch.equal(stats0, stats1)  # perplexity and codes used of the global batch, on every rank
    single, stats = run_steps(make_quantizer(kind).train(), global_batches())
    torch.testing.assert_close(rank0, single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats0, stats, atol=1e-5, rtol=1e-5)
