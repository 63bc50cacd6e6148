"""Oracle tests of the RePaint sampler: exact-noise models, noise levels, seeds, counts."""

from __future__ import annotations

import pytest
import torch

import models
from models.guidance import classifier_gradient
from models.sampler_settings import RePaintSettings
from models.sampling import SampleBatch, SampleParams, step

DIFFUSION = models.build_diffusion({"diffusion_steps": 1000, "noise_schedule": "linear",
                                    "timestep_respacing": "250", "learn_sigma": True})


class NoiseOracle:
    """A "network" that returns the exact noise explaining x_t as a noising of `target`.

    With it, the x0 estimate is `target` at every step, so the sampler must end on `target`
    in the unknown region. Timesteps arrive on the original 0..999 scale.
    """

    def __init__(self, target: torch.Tensor):
        self.target = target
        self.alphas_cumprod = torch.cumprod(1 - DIFFUSION.base_betas, 0)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, t, y=None):
        self.calls.append((x.clone(), t.clone()))
        ac = self.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        eps = (x - ac.sqrt() * self.target[: len(x)]) / (1 - ac).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)


def _images(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    target = torch.rand(n, 3, size, size, generator=g) * 1.6 - 0.8
    keep = torch.zeros(n, 1, size, size)
    keep[:, :, :, : size // 2] = 1
    return image, target, keep


@pytest.mark.parametrize("jumps", [(10, 1), (5, 3), (10, 10)], ids=["no-resampling", "5x3", "paper"])
def test_exact_noise_oracle_reconstructs_target(jumps):
    image, target, keep = _images()
    jump_length, jump_n_sample = jumps
    oracle = NoiseOracle(target)
    out = models.inpaint(oracle, DIFFUSION, image, keep, t_T=50 if jumps != (10, 10) else 250,
                         jump_length=jump_length, jump_n_sample=jump_n_sample, seed=3)
    unknown = keep.expand_as(out) < 0.5
    assert (out - target)[unknown].abs().max() < 1e-3
    assert torch.equal(out[~unknown], image[~unknown])


def test_paper_schedule_costs_2410_evaluations():
    image, target, keep = _images(n=1, size=8)
    oracle = NoiseOracle(target)
    seen = []
    models.inpaint(oracle, DIFFUSION, image, keep, seed=0, progress=lambda i, n, x0: seen.append((i, n)))
    assert len(oracle.calls) == 2410
    assert seen[-1] == (2410, 2410) and len(seen) == 2410


def test_network_receives_original_scale_timesteps():
    image, target, keep = _images(n=1, size=8)
    oracle = NoiseOracle(target)
    models.inpaint(oracle, DIFFUSION, image, keep, t_T=250, jump_length=10, jump_n_sample=1, seed=0)
    timesteps = [int(t) for _, t in oracle.calls]
    assert timesteps[0] == 999 and timesteps[-1] == 0 and timesteps[49] == 802  # index 200, as the reference README gives
    assert timesteps == list(DIFFUSION.schedule(250).timestep_map)[::-1]


def test_known_region_is_noised_to_the_level_of_the_input_x_t():
    """Pins which noise level the known region gets: alphas_cumprod of the index being denoised.

    With gt = 1 in the known region, (x_known - sqrt(ac[a])) / sqrt(1 - ac[a]) must look like
    standard normal noise at every step but the first (where x is pure noise everywhere).
    """
    size, t_T = 64, 10
    image = torch.ones(1, 3, size, size)
    keep = torch.zeros(1, 1, size, size)
    keep[..., : size // 2] = 1
    oracle = NoiseOracle(torch.zeros_like(image))
    models.inpaint(oracle, DIFFUSION, image, keep, t_T=t_T, jump_length=3, jump_n_sample=2, seed=1)
    schedule = DIFFUSION.schedule(t_T)
    index_of = {t: i for i, t in enumerate(schedule.timestep_map)}
    known = keep.expand_as(image) > 0.5
    for call, (x, t) in enumerate(oracle.calls):
        a = index_of[int(t)]
        ac = float(schedule.alphas_cumprod[a])
        expected_mean = 0.0 if call == 0 else ac**0.5
        z = (x[known] - expected_mean) / (1.0 if call == 0 else (1 - ac) ** 0.5)
        assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05, (call, a)


def test_known_pixels_are_preserved_bit_for_bit():
    image, _, keep = _images(n=2, size=32)
    m = models.load_preset("tiny")
    out = models.inpaint(m.unet, m.diffusion, image, keep, t_T=20, jump_length=3, jump_n_sample=2, seed=5)
    known = keep.expand_as(image) > 0.5
    assert torch.equal(out[known], image[known])
    assert not torch.equal(out[~known], image[~known])


def test_same_seed_same_output_whatever_shares_the_batch():
    image, _, keep = _images(n=3, size=32)
    m = models.load_preset("tiny")
    mine = SampleParams(seed=42, sampler=RePaintSettings(steps=20, jump_length=3, jump_n_sample=2))
    with torch.inference_mode():
        alone = SampleBatch(m.diffusion, image[:1], keep[:1], [mine])
        while not alone.done:
            step(m.unet, alone)
        # Neighbours with other seeds, step counts and jump settings, and different images.
        shared = SampleBatch(m.diffusion, image, keep, [
            mine, SampleParams(seed=7, sampler=RePaintSettings(steps=30, jump_length=5, jump_n_sample=3)),
            SampleParams(seed=9, sampler=RePaintSettings(steps=10, jump_length=10, jump_n_sample=1))])
        evaluations = 0
        while not shared.done:
            evaluations += step(m.unet, shared)
    torch.testing.assert_close(shared.result()[0], alone.result()[0], atol=1e-4, rtol=0)
    assert evaluations == sum(s.total_evaluations for s in shared.states)
    assert [s.evaluations for s in shared.states] == [
        models.count_model_evaluations(models.jump_schedule(t, jump_length=jl, jump_n_sample=jn))
        for t, jl, jn in ((20, 3, 2), (30, 5, 3), (10, 10, 1))]


def test_different_seeds_differ_and_same_seed_repeats():
    image, _, keep = _images(n=1, size=32)
    m = models.load_preset("tiny")
    run = lambda seed: models.inpaint(m.unet, m.diffusion, image, keep, t_T=10, jump_length=10,
                                      jump_n_sample=1, seed=seed)
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_class_labels_reach_the_model_and_must_be_all_or_none():
    image, target, keep = _images(n=2, size=8)
    seen = []

    def model(x, t, y=None):
        seen.append(y)
        return NoiseOracle(target)(x, t)

    models.inpaint(model, DIFFUSION, image, keep, t_T=5, jump_length=5, jump_n_sample=1, seed=0, y=[3, 7])
    assert all(torch.equal(y, torch.tensor([3, 7])) for y in seen)
    with pytest.raises(ValueError, match="class label"):
        SampleBatch(DIFFUSION, image, keep, [SampleParams(seed=0, class_label=1), SampleParams(seed=1)])


class LinearClassifier:
    """logits_k = <w_k, x>: log p(y|x) has the closed-form gradient w_y - sum_k p_k w_k."""

    def __init__(self, shape, classes=4):
        self.w = torch.randn(classes, *shape, generator=torch.Generator().manual_seed(0))

    def __call__(self, x, t):
        return torch.einsum("nchw,kchw->nk", x, self.w)


def test_classifier_gradient_is_scaled_grad_log_p():
    x = torch.randn(2, 3, 4, 4)
    clf = LinearClassifier(x.shape[1:])
    y = torch.tensor([1, 3])
    scale = torch.tensor([2.0, 0.5]).view(-1, 1, 1, 1)
    grad = classifier_gradient(clf, x, torch.tensor([5, 5]), y, scale)
    p = clf(x, None).softmax(-1)
    expected = (clf.w[y] - torch.einsum("nk,kchw->nchw", p, clf.w)) * scale
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-5)


def test_guidance_changes_only_guided_samples():
    image, target, keep = _images(n=2, size=8)
    clf = LinearClassifier(image.shape[1:])
    run = lambda scale: models.inpaint(NoiseOracle(target), DIFFUSION, image, keep, t_T=10, jump_length=10,
                                       jump_n_sample=1, seed=0, y=[1, 2], classifier=clf,
                                       classifier_scale=scale)
    plain = models.inpaint(NoiseOracle(target), DIFFUSION, image, keep, t_T=10, jump_length=10,
                           jump_n_sample=1, seed=0, y=[1, 2])
    assert torch.equal(run(0.0), plain)
    assert not torch.allclose(run(5.0), plain)


def test_samples_join_and_leave_a_running_batch_without_changing_results():
    """Continuous batching: B joins while A runs, A leaves when done; both match running alone."""
    image, _, keep = _images(n=2, size=32)
    m = models.load_preset("tiny")
    pa = SampleParams(seed=1, sampler=RePaintSettings(steps=12, jump_length=3, jump_n_sample=2))
    pb = SampleParams(seed=2, sampler=RePaintSettings(steps=20, jump_length=5, jump_n_sample=2))

    def alone(i, p):
        with torch.inference_mode():
            b = SampleBatch(m.diffusion, image[i:i + 1], keep[i:i + 1], [p])
            while not b.done:
                step(m.unet, b)
            return b.result()[0]

    with torch.inference_mode():
        batch = SampleBatch(m.diffusion, device="cpu")
        (a,) = batch.add(image[:1], keep[:1], [pa])
        for _ in range(5):
            step(m.unet, batch)
        (b,) = batch.add(image[1:], keep[1:], [pb])
        results = {}
        while len(batch):
            assert step(m.unet, batch) == len(batch)
            finished = [s for s in batch.states if s.done]
            for s in finished:
                results[id(s)] = batch.result([s])[0]
            batch.remove(finished)
    torch.testing.assert_close(results[id(a)], alone(0, pa), atol=1e-4, rtol=0)
    torch.testing.assert_close(results[id(b)], alone(1, pb), atol=1e-4, rtol=0)
