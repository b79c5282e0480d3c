"""BinaryVAE, FrozenEncoder and HyBNN composition."""

from __future__ import annotations

import pytest
import torch

from sbnn.hybrid.heads import HyBNN, SBNNHead, STEHead
from sbnn.hybrid.latent import binary_kl_uniform
from sbnn.hybrid.training import accuracy, fit_classifier, fit_vae
from sbnn.hybrid.vae import BinaryVAE, FrozenEncoder


@pytest.fixture
def images(gen):
    return torch.rand(24, 1, 8, 8, generator=gen)


def test_loss_is_recon_plus_weighted_kl(images, gen):
    vae = BinaryVAE(n_latent=12, kl_weight=0.25)
    terms = vae.loss(images, generator=gen)
    torch.testing.assert_close(terms.loss, terms.recon + 0.25 * terms.kl)
    torch.testing.assert_close(terms.kl, binary_kl_uniform(vae.logits(images)).sum() / len(images))


def test_vae_training_lowers_the_loss(images):
    history = fit_vae(BinaryVAE(n_latent=12), images, epochs=8, batch_size=8)
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.parametrize(("kind", "steps", "shape"), [("mode", 0, (24, 12)), ("sample", 0, (24, 12)), ("sample", 5, (5, 24, 12)), ("mode", 3, (3, 24, 12))])
def test_encoder_output_is_exactly_binary(images, gen, kind, steps, shape):
    codes = FrozenEncoder(BinaryVAE(n_latent=12), kind=kind, n_steps=steps)(images, generator=gen)
    assert codes.shape == shape
    assert set(codes.unique().tolist()) <= {0.0, 1.0}
    assert not codes.requires_grad


def test_mode_train_is_the_code_repeated(images):
    enc = FrozenEncoder(BinaryVAE(n_latent=12), kind="mode", n_steps=4)
    codes = enc(images)
    assert torch.equal(codes, codes[:1].expand_as(codes))


def test_frozen_encoder_does_not_change_while_a_head_trains(images):
    vae = BinaryVAE(n_latent=12)
    fit_vae(vae, images, epochs=1, batch_size=8)
    enc = FrozenEncoder(vae, kind="sample")
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    for head in (SBNNHead(12, hidden=8), STEHead(12, hidden=8)):
        net = HyBNN(enc, head)
        head_before = [p.clone() for p in head.parameters()]
        fit_classifier(net, images, torch.arange(24) % 2, epochs=3, batch_size=8, lr=0.05)
        assert any(not torch.equal(a, b) for a, b in zip(head_before, head.parameters())), "the head must train"
    after = enc.state_dict()
    assert before.keys() == after.keys()
    for k in before:  # batch-norm running statistics included
        assert torch.equal(before[k], after[k]), k


def test_head_input_size_must_match_latent():
    with pytest.raises(ValueError, match="head takes 10 input features but the encoder gives 12.*in_features=12"):
        HyBNN(FrozenEncoder(BinaryVAE(n_latent=12)), STEHead(10))


def test_bad_encoder_settings_and_inputs():
    vae = BinaryVAE(n_latent=4)
    with pytest.raises(ValueError, match="kind must be"):
        FrozenEncoder(vae, kind="mean")
    with pytest.raises(ValueError, match="n_steps"):
        FrozenEncoder(vae, n_steps=-1)
    with pytest.raises(ValueError, match=r"expected images \[B, 1, 8, 8\]"):
        FrozenEncoder(vae)(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="unknown estimator"):
        BinaryVAE(estimator="straight")


def test_hybnn_learns_a_separable_code(gen):
    # codes whose first bit is the label: both heads learn it (sign weights need not reach 100 %)
    z = torch.randint(0, 2, (128, 16), generator=gen).float()
    y = z[:, 0].long()
    for head, lr in ((STEHead(16, hidden=32), 1e-2), (SBNNHead(16, hidden=32), 0.1)):
        fit_classifier(head, z, y, epochs=40, lr=lr, batch_size=32, kl_weight=0.01)
        assert accuracy(head, z, y) >= 0.9, type(head).__name__  # chance is 0.5


def test_fit_classifier_depends_on_its_seed_alone(gen):
    # the head's noise comes from the global generator: two runs from one start and one seed, after
    # different global draws, end equal, differ from a run with another seed, and leave the
    # caller's generator where it was
    z = torch.randint(0, 2, (40, 8), generator=gen).float()
    y = z[:, 0].long()
    start = SBNNHead(8, hidden=6).state_dict()

    def run(seed: int, global_seed: int) -> dict[str, torch.Tensor]:
        head = SBNNHead(8, hidden=6)
        head.load_state_dict(start)
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        fit_classifier(head, z, y, epochs=2, lr=0.1, batch_size=16, seed=seed)
        assert torch.equal(torch.get_rng_state(), before)
        return head.state_dict()

    a, b, c = run(3, 0), run(3, 1), run(4, 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
