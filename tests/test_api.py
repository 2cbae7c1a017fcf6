"""vaelab from Python: the README's example as written, and what its calls return."""

import re
from pathlib import Path

import pytest
import torch

import vaelab
import vaelab.errors

ROOT = Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
    (block,) = re.findall(r"## From Python.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return block


def test_the_readmes_python_example_runs_and_means_what_it_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(readme_python_example(), "README.md", "exec"), names)
    run, model, x = names["run"], names["model"], names["x"]
    assert (run.run_dir / "checkpoints" / "best.ckpt").is_file()
    assert run.run_dir.is_relative_to(Path("outputs/train/runs"))
    assert not model.training
    # encode is the posterior's mean and standard deviation, the same on every call.
    q = model.posterior(x)
    mean, scale = names["mean"], names["scale"]
    assert torch.equal(mean, q.mu) and torch.allclose(scale, q.std)
    assert torch.equal(model.encode(x)[0], mean)
    assert torch.allclose(names["x_hat"], model.likelihood.mean(model.decoder(mean)))
    assert names["samples"].shape == (16, 1, 8, 8)
    # load gives the run's best weights and its data (the digits' test split).
    best = torch.load(run.run_dir / "checkpoints" / "best.ckpt", weights_only=False, map_location="cpu")
    for name, value in model.state_dict().items():
        assert torch.equal(value, best["state_dict"][name]), name
    assert len(names["data"].splits["test"]) == len(x)
    # The importance-sampled log p(x) lies above the ELBO (a bound the model was tested on), and
    # below 0: it is the log of a probability of binary images.
    log_px = names["log_px"]
    assert log_px.shape == (len(x),) and (log_px < 0).all()
    assert log_px.mean() > run.metrics["test/elbo"] - 0.5
    with torch.no_grad():
        elbo = model.terms(x)["elbo"]
    assert log_px.mean() > elbo.mean()


@pytest.mark.parametrize("name", ["reproduce_mnist_vae", "reproduce_mnist_iwae_k5"])
def test_load_reads_a_shipped_results_file(name):
    model, data = vaelab.load(ROOT / "results" / name / "model.ckpt", data=False)
    assert data is None and not model.training
    mean, scale = model.encode(torch.zeros(2, 1, 28, 28))
    assert mean.shape == scale.shape == (2, 50) and (scale > 0).all()
    # The weights are the file's, not a fresh model's.
    saved = torch.load(ROOT / "results" / name / "model.ckpt", weights_only=False, map_location="cpu")["state_dict"]
    loaded = model.state_dict()
    assert saved.keys() == loaded.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key


def test_load_of_a_missing_path_is_one_line(tmp_path):
    with pytest.raises(vaelab.errors.UserError, match="ckpt_path"):
        vaelab.load(tmp_path / "nothing.ckpt")
