"""The dropout ops: the compiled Bernoulli mask draws what torch's bernoulli_ draws, and the
masked dot product equals its definition (float64) on both of its paths."""
import contextlib

import pytest
import torch

from featup_mmseg.ops import bernoulli_mask, masked_dot, masked_dot_reference, use_reference_ops
from featup_mmseg.ops import dropout_ops


def test_the_compiled_draw_is_in_use_where_it_matches_torch(monkeypatch):
    # on CPUs where torch draws through MKL (Intel) the probe says no and torch's draw runs
    if not dropout_ops._compiled_bernoulli_matches_torch():
        pytest.skip("this torch draws bernoulli_ through MKL; the compiled draw is not used")
    calls = []
    original = torch.Tensor.bernoulli_
    monkeypatch.setattr(torch.Tensor, 'bernoulli_',
                        lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs))
    before = torch.get_rng_state()
    bernoulli_mask((3, 5), 0.5)
    assert not calls and not torch.equal(torch.get_rng_state(), before)


# element counts around the generator's 624-word state blocks (two words an element)
@pytest.mark.parametrize('size', [(0,), (1,), (311,), (312,), (313, ), (2, 3, 5, 7), (1000,)])
@pytest.mark.parametrize('words_used_before', [0, 1, 623, 624])
@pytest.mark.parametrize('p', [0.8, 0.0, 1.0, 0.37])
def test_bernoulli_mask_draws_what_torch_draws(size, words_used_before, p):
    torch.manual_seed(7)
    torch.rand(words_used_before)  # a float32 uniform uses one 32-bit word
    state = torch.get_rng_state()
    expected = torch.empty(size, dtype=torch.bool).bernoulli_(p)
    expected_state = torch.get_rng_state()
    torch.set_rng_state(state)
    mask = bernoulli_mask(size, p)
    assert mask.dtype == torch.bool and mask.shape == size and mask.is_contiguous()
    assert torch.equal(mask, expected)
    assert torch.equal(torch.get_rng_state(), expected_state)  # the next draws agree too


def test_bernoulli_mask_draws_a_fresh_generator_and_a_large_mask_like_torch():
    torch.manual_seed(3)
    torch.default_generator.set_state(torch.Generator().get_state())  # never drawn from
    expected = torch.empty(5000, dtype=torch.bool).bernoulli_(0.8)
    torch.default_generator.set_state(torch.Generator().get_state())
    mask = bernoulli_mask([5000], 0.8)
    assert torch.equal(mask, expected)
    assert 0.75 < mask.float().mean() < 0.85


@pytest.mark.parametrize('size, p, message', [
    ((2, -1), 0.5, 'size must be a sequence of non-negative ints'),
    (5, 0.5, 'size must be a sequence'),
    ((2, 2.0), 0.5, 'size must be'),
    ((2, 2), 1.5, r'p must be a number in \[0, 1\]'),
    ((2, 2), True, 'p must be'),
])
def test_bernoulli_mask_rejects_bad_arguments(size, p, message):
    with pytest.raises(ValueError, match=f'bernoulli_mask: {message}'):
        bernoulli_mask(size, p)


def masked_dot_cases():
    """(x, keep, weight): channels-last pixels with a mask drawn channel-major (read as a
    permuted view) or pixel-major, leading dimensions of 1 to 3, an empty batch."""
    torch.manual_seed(0)
    cases = []
    for batch, channels, height, width in [(2, 11, 5, 7), (1, 3, 1, 1), (0, 4, 3, 3)]:
        x = torch.randn(batch, height, width, channels, dtype=torch.float64)
        channel_major = torch.rand(batch, channels, height, width) < 0.7
        cases.append((x, channel_major.permute(0, 2, 3, 1)))
        cases.append((x, torch.rand(batch, height, width, channels) < 0.7))
    x = torch.randn(9, 6, dtype=torch.float64)
    cases.append((x, torch.rand(9, 6) < 0.5))
    cases.append((x.T.contiguous().T, torch.rand(6, 9).T < 0.5))  # x not channel-contiguous
    return [(x, keep, torch.randn(x.shape[-1], dtype=torch.float64)) for x, keep in cases]


@pytest.mark.parametrize('compiled', [True, False], ids=['compiled', 'chunks'])
@pytest.mark.parametrize('case', range(len(masked_dot_cases())))
def test_masked_dot_equals_its_definition_and_its_gradient(compiled, case):
    x, keep, weight = masked_dot_cases()[case]
    x.requires_grad_()
    weight.requires_grad_()
    expected = masked_dot_reference(x, keep, weight)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (x, weight), grad)
    if compiled:
        out = masked_dot(x, keep, weight)
    else:
        with use_reference_ops():  # no compiled kernel: the chunks of PyTorch ops
            out = masked_dot(x, keep, weight)
    assert out.shape == x.shape[:-1]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    for ours, reference in zip(torch.autograd.grad(out, (x, weight), grad), expected_grads):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)


def test_masked_dot_gradient_of_one_input_only():
    x, keep, weight = masked_dot_cases()[0]
    weight.requires_grad_()
    grad_weight, = torch.autograd.grad(masked_dot(x, keep, weight).sum(), weight)
    torch.testing.assert_close(grad_weight, torch.where(keep, x, 0).sum((0, 1, 2)),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize('compiled', [True, False], ids=['compiled', 'chunks'])
def test_masked_dot_spans_more_than_one_task_of_pixels(compiled):
    # more pixels than one task of the CPU kernel (512) and one chunk (4096), in float32
    torch.manual_seed(0)
    x = torch.randn(1, 4100, 3, requires_grad=True)
    keep = torch.rand(1, 4100, 3) < 0.5
    weight = torch.randn(3, requires_grad=True)
    with contextlib.nullcontext() if compiled else use_reference_ops():
        out = masked_dot(x, keep, weight)
    grads = torch.autograd.grad(out, (x, weight), torch.ones_like(out))
    torch.testing.assert_close(out, masked_dot_reference(x, keep, weight), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], torch.where(keep, weight.detach(), 0), rtol=0, atol=0)
    torch.testing.assert_close(grads[1], torch.where(keep, x.detach(), 0).sum((0, 1)),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_masked_dot_half_precision_accumulates_in_float(dtype):
    torch.manual_seed(0)
    x, keep, weight = torch.randn(2, 3, 64), torch.rand(2, 3, 64) < 0.8, torch.randn(64)
    out = masked_dot(x.to(dtype), keep, weight.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), masked_dot_reference(x, keep, weight),
                               rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize('change, message', [
    (dict(x=torch.randn(4)), 'x must be a floating point'),
    (dict(x=torch.ones(2, 4, dtype=torch.int64)), 'x must be a floating point'),
    (dict(keep=torch.ones(2, 4)), "keep must be a bool tensor of x's shape"),
    (dict(keep=torch.ones(2, 3, dtype=torch.bool)), "keep must be a bool tensor of x's shape"),
    (dict(weight=torch.randn(3)), r"weight must be a \(4,\) tensor of x's dtype"),
    (dict(weight=torch.randn(4, dtype=torch.float64)), "weight must be a"),
])
def test_masked_dot_rejects_bad_arguments(change, message):
    args = dict(x=torch.randn(2, 4), keep=torch.ones(2, 4, dtype=torch.bool),
                weight=torch.randn(4))
    args.update(change)
    with pytest.raises(ValueError, match=f'masked_dot: {message}'):
        masked_dot(**args)
