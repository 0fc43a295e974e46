"""The pretraining's cheaper computations equal the plain formulas they replace (float64)."""
import pytest
import torch
import torch.nn.functional as F

from featup_mmseg.layers import (AttentionDownsampler, Jitter, JBUStack, ReconstructionCriterion,
                                 multiview_reconstruction_loss)
from featup_mmseg.layers.downsamplers import window_grid


def padded_zoomed_crop(x, jitter):
    """The view as its definition reads: reflect pad, bilinear zoom, crop, flip."""
    height, width = x.shape[-2:]
    view = F.pad(x, [jitter.pad] * 4, mode='reflect') if jitter.pad else x
    if jitter.zoom != 1.0:
        size = [round(n * jitter.zoom) for n in view.shape[-2:]]
        view = F.interpolate(view, size, mode='bilinear', align_corners=False)
    view = view[..., jitter.top:jitter.top + height, jitter.left:jitter.left + width]
    return view.flip(-1) if jitter.flip else view


@pytest.mark.parametrize('jitter', [
    Jitter(pad=5, zoom=1.73, top=17, left=2, flip=True),
    Jitter(pad=7, zoom=2.0, top=0, left=31, flip=False),  # the padded corner
    Jitter(pad=3, zoom=1.0, top=6, left=0, flip=True),
    Jitter(pad=0, zoom=1.31, top=4, left=5, flip=False),
])
@pytest.mark.parametrize('channels_last', [False, True])
def test_jitter_equals_pad_zoom_crop_and_its_gradient(jitter, channels_last):
    x = torch.randn(2, 5, 20, 26, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    view, expected = jitter(x), padded_zoomed_crop(x, jitter)
    torch.testing.assert_close(view, expected, rtol=0, atol=1e-12)
    grad = torch.randn_like(expected)
    torch.testing.assert_close(torch.autograd.grad(view, x, grad)[0],
                               torch.autograd.grad(expected, x, grad)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize('zoom', [1.0, 1.6])
def test_jitter_gathers_line_by_line_as_full_size(zoom):
    # CPU gathers line by line, accelerators as full-size index_select: the same view
    jitter = Jitter(pad=4, zoom=zoom, top=3, left=5, flip=True)
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    views = []
    for line_by_line in (True, False):
        view = x
        for dim, side, offset, flip in ((2, 11, jitter.top, False),
                                        (3, 9, jitter.left, jitter.flip)):
            view = Jitter._blend(view, dim, *jitter._taps(side, offset, flip, x),
                                 line_by_line=line_by_line)
        views.append((view, torch.autograd.grad(view, x, grad)[0]))
    for line, full in zip(*views):
        torch.testing.assert_close(line, full, rtol=0, atol=1e-12)


def test_jitter_matches_interpolate_in_float32():
    # the source coordinates are rounded as F.interpolate's, so float32 differs by round-off
    x = torch.randn(1, 3, 97, 61)
    jitter = Jitter(pad=9, zoom=1.87, top=40, left=33, flip=True)
    torch.testing.assert_close(jitter(x), padded_zoomed_crop(x, jitter), rtol=0, atol=2e-6)


def unfolded_windows(x, kernel_size, output_size):
    """(B, C, k*k, h, w): the windows as their definition reads, unfolded, the extra ones
    dropped."""
    stride, grid = window_grid(x.shape[-2:], output_size, kernel_size)
    windows = F.unfold(x, kernel_size, stride=stride).view(*x.shape[:2], kernel_size**2, *grid)
    return windows[..., :output_size[0], :output_size[1]]


def attention_downsample(downsampler, features, output_size):
    """The attention downsampler as its definition reads: attention_net (dropout, linear)
    on the pixels, softmax over each unfolded window of w * saliency + b, the weighted sum
    of the unfolded feature windows."""
    kernel_size = downsampler.kernel_size
    saliency = downsampler.attention_net(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    logits = unfolded_windows(saliency, kernel_size, output_size)[:, 0]
    weights = torch.softmax(logits * downsampler.w.reshape(1, -1, 1, 1) +
                            downsampler.b.reshape(1, -1, 1, 1), dim=1)
    return torch.einsum('bcphw,bphw->bchw', unfolded_windows(features, kernel_size, output_size),
                        weights)


@pytest.mark.parametrize('input_size, output_size, kernel_size', [
    ((50, 37), (7, 5), 7), ((64, 48), (4, 3), 16), ((33, 40), (1, 3), 5)])
@pytest.mark.parametrize('training', [False, True])
def test_attention_downsampler_equals_the_unfolded_windows(input_size, output_size,
                                                           kernel_size, training):
    torch.manual_seed(0)
    downsampler = AttentionDownsampler(6, kernel_size).double().train(training)
    features = torch.randn(2, 6, *input_size, dtype=torch.float64, requires_grad=True)
    # in training, both draw the same dropout mask from the same seed
    torch.manual_seed(1)
    expected = attention_downsample(downsampler, features, output_size)
    torch.manual_seed(1)
    out = downsampler(features, output_size)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    grad = torch.randn_like(out)
    inputs = [features, *downsampler.parameters()]
    for ours, reference in zip(torch.autograd.grad(out, inputs, grad),
                               torch.autograd.grad(expected, inputs, grad)):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)


def test_attention_downsampler_trains_on_an_empty_batch():
    downsampler = AttentionDownsampler(4, 3)
    features = torch.randn(0, 4, 9, 9, requires_grad=True)
    out = downsampler(features, (3, 3))
    assert out.shape == (0, 4, 3, 3)
    out.sum().backward()
    assert features.grad.shape == features.shape


def test_attention_downsampler_training_draws_the_dropout_of_its_definition():
    # channels-last features (as the views are) still get the mask nn.Dropout draws for
    # (B, C, H, W)-contiguous ones; the dropout must act (the eval output differs)
    torch.manual_seed(0)
    downsampler = AttentionDownsampler(5, 4).double()
    features = torch.randn(1, 5, 12, 10, dtype=torch.float64)
    torch.manual_seed(2)
    expected = attention_downsample(downsampler, features, (3, 3))
    torch.manual_seed(2)
    out = downsampler(features.contiguous(memory_format=torch.channels_last), (3, 3))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(out, downsampler.eval()(features, (3, 3)))


def test_view_by_view_backward_gives_the_loss_and_gradients_of_the_whole():
    torch.manual_seed(0)
    stack = JBUStack(8, num_stages=2).double()
    criteria = [ReconstructionCriterion(8, kernel_size=5, proj_dim=4, tv_weight=0.1).double()]
    backbone = torch.nn.Conv2d(3, 8, 8, stride=8).double()  # 48 x 40 -> 6 x 5
    params = list(stack.parameters()) + list(criteria[0].parameters())
    images = torch.randn(2, 3, 48, 40, dtype=torch.float64)

    def run(backward_weight):
        torch.manual_seed(1)  # the same views, dropouts and projections
        for param in params:
            param.grad = None
        loss = multiview_reconstruction_loss(
            images, lambda x: [backbone(x)], lambda maps, x: [stack(maps[0], x)], [0],
            criteria, num_jitters=3, max_pad=6, backward_weight=backward_weight)
        if backward_weight is None:
            (0.5 * loss).backward()
        return loss, [param.grad.clone() for param in params]

    whole, whole_grads = run(None)
    by_view, view_grads = run(0.5)
    assert not by_view.requires_grad
    torch.testing.assert_close(by_view, whole.detach(), rtol=0, atol=1e-12)
    for ours, reference in zip(view_grads, whole_grads):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
