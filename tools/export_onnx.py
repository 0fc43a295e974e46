"""Export an mmseg segmentor (featup_mmseg's models included) to ONNX, in tensor mode.

The exported graph maps the preprocessed batch (normalised, channels as the config's
data_preprocessor leaves them) to the decode head's logits, (B, num_classes, h, w), as
``model(inputs, mode='tensor')`` does; resizing to the image and argmax stay outside, as
in mmdeploy. featup_mmseg's window ops become standard ONNX operators
(featup_mmseg.ops.onnx_export), so a plain ONNX Runtime runs the file.

    python tools/export_onnx.py CONFIG [CHECKPOINT] --shape H W --out model.onnx [--check]
        [--dynamo] [--opset N] [--batch B] [--dynamic none|batch|all] [--tolerance T]

--dynamo uses torch.export's exporter (torch >= 2.5) instead of the TorchScript one.
--dynamic marks the batch (default), or the batch and the image size, as dynamic; models
whose sizes are computed in Python (the JBU neck's and the output upsampler's stages) only
support a dynamic batch, and A2U only a fixed one: other requests are refused before the
export, naming the axes the model supports (with --dynamo a dynamic batch is exported from
a batch of at least 2: torch.export fixes axes of size 1). The checkpoint and --out are
checked before the model is built.
--check runs the file with ONNX Runtime on CPU at the export shape and, for each dynamic
axis, at a second shape, prints the largest difference from PyTorch, and exits with
status 1 if it exceeds --tolerance. Without a checkpoint the weights are random.
"""
import argparse
import sys

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from mmseg.registry import MODELS

import featup_mmseg.plugin  # noqa: F401  (registrations)
from featup_mmseg.file_checks import check_input_file, check_output_file
from featup_mmseg.ops.onnx_export import export_onnx

INPUT_NAME = 'inputs'
OUTPUT_NAME = 'seg_logits'
# pixels added to each side for the second checked shape with --dynamic all
SHAPE_STEP = 32


class TensorMode(torch.nn.Module):
    """``segmentor(inputs, mode='tensor')`` as a module with one tensor input."""

    def __init__(self, segmentor: torch.nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.segmentor(inputs, mode='tensor')


def build_model(config: str, checkpoint=None, cfg_options=None) -> torch.nn.Module:
    """The config's segmentor in eval mode, the checkpoint loaded strictly, training-only
    parts (auxiliary head, SyncBN) removed, wrapped for tensor mode."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    # No init_weights(): it would fetch the config's pretrained backbone, which the
    # checkpoint replaces (without one the weights stay random, as built).
    torch.manual_seed(0)  # the same random weights on every run
    model = MODELS.build(cfg.model)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    if getattr(model, 'auxiliary_head', None) is not None:
        model.auxiliary_head = None  # training only
    return TensorMode(revert_sync_batchnorm(model)).eval()


def dynamic_axes_args(dynamic: str, dynamo: bool) -> dict:
    """torch.onnx.export's arguments marking the chosen input axes as dynamic."""
    if dynamic == 'none':
        return {}
    axes = [0] if dynamic == 'batch' else [0, 2, 3]
    if dynamo:
        dim = torch.export.Dim.AUTO  # what the model cannot vary stays static
        return {'dynamic_shapes': ({axis: dim for axis in axes}, )}
    names = {0: 'batch', 2: 'height', 3: 'width'}
    return {'dynamic_axes': {INPUT_NAME: {axis: names[axis] for axis in axes},
                             OUTPUT_NAME: {axis: names[axis] for axis in axes}}}


def check_shapes(shape, dynamic: str):
    """The input shapes --check runs: the export's, and one more per kind of dynamic axis."""
    batch, channels, height, width = shape
    shapes = [shape]
    if dynamic in ('batch', 'all'):
        shapes.append((batch + 1, channels, height, width))
    if dynamic == 'all':
        shapes.append((batch, channels, height + SHAPE_STEP, width + SHAPE_STEP))
    return shapes


def largest_differences(model: torch.nn.Module, path: str, shapes, seed: int = 0):
    """Yields (shape, max |ONNX Runtime - PyTorch|, max |PyTorch|) on random inputs of each
    shape; the difference is None, with ONNX Runtime's error, where the file cannot run."""
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    generator = torch.Generator().manual_seed(seed)
    for shape in shapes:
        inputs = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            expected = model(inputs).numpy()
        try:
            actual = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0]
        except Exception as err:  # onnxruntime raises its own Fail, InvalidArgument, ...
            yield shape, None, str(err).splitlines()[0]
            continue
        if actual.shape != expected.shape:
            yield shape, None, (f'ONNX Runtime returned shape {actual.shape}, PyTorch '
                                f'{expected.shape}')
            continue
        yield shape, float(np.abs(actual - expected).max()), float(np.abs(expected).max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='mmseg config file')
    parser.add_argument('checkpoint', nargs='?', help='model weights (default: random)')
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'),
                        help='input image size')
    parser.add_argument('--out', required=True, help='ONNX file to write')
    parser.add_argument('--check', action='store_true',
                        help='compare ONNX Runtime with PyTorch and print the difference')
    parser.add_argument('--dynamo', action='store_true',
                        help="use torch.export's exporter (torch >= 2.5), not TorchScript's")
    parser.add_argument('--opset', type=int, default=None,
                        help="ONNX opset (default: the exporter's, at least 13)")
    parser.add_argument('--batch', type=int, default=1, help='batch size of the export')
    parser.add_argument('--dynamic', choices=['none', 'batch', 'all'], default='batch',
                        help='dynamic input axes: none, the batch, or the batch and image size')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest difference --check accepts')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args()
    try:
        if args.checkpoint:
            check_input_file(args.checkpoint, 'checkpoint')
        check_output_file(args.out)
    except OSError as err:
        parser.error(str(err))

    model = build_model(args.config, args.checkpoint, args.cfg_options)
    batch = args.batch
    if args.dynamo and args.dynamic != 'none' and batch == 1:
        batch = 2  # torch.export fixes axes of size 1: a dynamic batch needs an example of 2
    shape = (batch, 3, *args.shape)
    kwargs = dynamic_axes_args(args.dynamic, args.dynamo)
    if args.opset is not None:
        kwargs['opset_version'] = args.opset
    try:
        export_onnx(model, (torch.randn(*shape), ), args.out, dynamo=args.dynamo,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], **kwargs)
    except ValueError as err:  # what the model refuses (dynamic axes, input sizes)
        sys.exit(f'{parser.prog}: error: {err}')
    exporter = 'dynamo (torch.export)' if args.dynamo else 'TorchScript'
    print(f'wrote {args.out}: {exporter} exporter, input {INPUT_NAME} {shape}, '
          f'dynamic: {args.dynamic}')
    if not args.check:
        return
    failed = False
    for checked, difference, detail in largest_differences(model, args.out,
                                                           check_shapes(shape, args.dynamic)):
        if difference is None:
            failed = True
            print(f'input {checked}: ONNX Runtime failed: {detail}')
            continue
        failed |= difference > args.tolerance
        print(f'input {checked}: largest |ONNX Runtime - PyTorch| = {difference:.3g} '
              f'(largest |PyTorch| = {detail:.3g})')
    if failed:
        print(f'check failed (tolerance {args.tolerance:g})', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
