"""ONNX export of the window and neighbourhood-attention ops: translations into standard
ONNX operators.

The forward ops of featup_mmseg (``featup_mmseg::window_correlation``, ``adaptive_conv``,
``adaptive_conv_backward_kernel``, which ``window_cross_correlation`` runs on, and
``neighbourhood_attention_scores`` / ``neighbourhood_attention_aggregate``, which AnyUp and
NAF run on) are compiled kernels that no ONNX runtime knows. This module expresses each in
standard ONNX (opset >= 13, default domain only, so a plain ONNX Runtime or TensorRT runs
the result). The window ops:

- the input is padded once by the window radius with ``Pad`` (mode 'reflect' for
  'reflect' — both exclude the border pixel, like torch —, 'edge' for 'replicate',
  'constant' 0 for 'zeros');
- each of the k*k taps is a ``Slice`` of the padded map, shifted by the tap's offset. Its
  end is counted from the end of the padded map, so the slices hold for any input size
  (dynamic height and width);
- window (cross-)correlation: per tap ``Mul`` with the queries and ``ReduceSum`` over
  channels, the k*k logits joined by ``Concat``; adaptive_conv: per tap ``Mul`` with that
  tap's kernel plane and a running ``Add``.

The cross-scale neighbourhood-attention ops: for each of the k*k taps, the low-res row that
each query row reads, and the column that each query column reads, depend only on the sizes
(H, h, k, dilation and border: ``reference.neighbourhood_sources``), so they are int64
constants computed at export time. Per tap, ``Gather`` takes the rows of the keys (values)
(h -> H), then their columns (w -> W); then, as above, ``Mul`` with the queries,
``ReduceSum`` and ``Concat`` for the scores, and ``Mul`` with the tap's weight plane and a
running ``Add`` for the aggregate. The heights and widths of both maps are therefore fixed
by an export (the batch may vary): a dynamic one is refused with a ValueError where the
exporter shows it (and a module computing the sizes in Python, AnyUp and NAF, declares
them static, see :func:`check_dynamic_axes`).

Like the compiled kernels, this never materialises the (B, C, k*k, H, W) unfold or a dense
(H*W) x (h*w) attention matrix, and it computes the same sums (only the float rounding
order may differ).

Nothing here runs at import or touches torch.onnx until asked:

- ``dynamo=False`` (the TorchScript exporter, every supported torch):
  :func:`register_onnx_translations` registers the ops' symbolics, for the
  ``featup_mmseg::`` namespace only (importing ``featup_mmseg.plugin`` does). Without them
  the ops refuse to be traced by that exporter, naming this call, instead of failing
  after tracing with torch's "unrecognized namespace featup_mmseg";
- ``dynamo=True`` (torch >= 2.5's ``torch.export``-based exporter): pass
  ``custom_translation_table=onnx_translation_table()`` (onnxscript is imported then);
- :func:`export_onnx` does both and calls ``torch.onnx.export``.
"""
import inspect
from typing import Callable, Dict, List, Sequence

import torch

from .reference import neighbourhood_sources
from .window_ops import NEIGHBOURHOOD_BORDERS, PADDING_MODES

# ReduceSum takes its axes as an input from opset 13 on; Pad, Slice, Gather, Mul, Add, Concat
# keep the form used here from opset 13 to the newest.
MIN_OPSET = 13
_ONNX_PAD_MODES = {'reflect': 'reflect', 'replicate': 'edge', 'zeros': 'constant'}
# Slice end meaning "to the end of the axis" (ONNX clamps it to the axis length).
_TO_END = 2**63 - 1


class _TorchScriptGraph:
    """Emits ONNX nodes into a TorchScript exporter graph context."""

    def __init__(self, g):
        self.g = g

    def node(self, op_type: str, *inputs, **attributes):
        # the TorchScript exporter types attributes by a suffix: _i int, _s string
        typed = {f'{name}_{"s" if isinstance(value, str) else "i"}': value
                 for name, value in attributes.items()}
        return self.g.op(op_type, *inputs, **typed)

    def ints(self, values: Sequence[int]):
        return self.g.op('Constant', value_t=torch.tensor(list(values), dtype=torch.int64))

    def split(self, x, parts: int, axis: int) -> List:
        """``parts`` slices of size 1 along ``axis`` (Split's sizes input: opsets 13+)."""
        return list(self.g.op('Split', x, self.ints([1] * parts), axis_i=axis, outputs=parts))

    def indices(self, values: torch.Tensor):
        """An int64 constant of ``values`` (1-D), e.g. Gather's indices."""
        return self.g.op('Constant', value_t=values.to(torch.int64))


class _OnnxScriptGraph:
    """Emits ONNX nodes through onnxscript ops, which the dynamo exporter records."""

    def __init__(self, op):
        self.op = op

    def node(self, op_type: str, *inputs, **attributes):
        return getattr(self.op, op_type)(*inputs, **attributes)

    def ints(self, values: Sequence[int]):
        return self.op.Constant(value_ints=list(values))

    def split(self, x, parts: int, axis: int) -> List:
        """``parts`` slices of size 1 along ``axis`` (Split's num_outputs: the dynamo
        exporter's opsets, 18+)."""
        return list(self.op.Split(x, axis=axis, num_outputs=parts))

    def indices(self, values: torch.Tensor):
        """An int64 constant of ``values`` (1-D), e.g. Gather's indices."""
        return self.op.Constant(value_ints=values.tolist())


def _check_mode(op: str, padding_mode: str) -> str:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f'{op}: padding_mode must be one of {PADDING_MODES}, '
                         f'got {padding_mode!r}')
    return _ONNX_PAD_MODES[padding_mode]


def _pad(graph, x, radius: int, padding_mode: str, op: str):
    """x (B, C, H, W) extended by ``radius`` on each side of H and W."""
    mode = _check_mode(op, padding_mode)
    if radius == 0:
        return x
    pads = graph.ints([0, 0, radius, radius, 0, 0, radius, radius])  # begins, then ends
    return graph.node('Pad', x, pads, mode=mode)


def _taps(graph, padded, kernel_size: int) -> List:
    """The k*k windows' taps: for tap p = i*k + j, padded[:, :, i:i + H, j:j + W]."""
    span = kernel_size - 1  # the padded map is H + span high and W + span wide
    axes = graph.ints([2, 3])
    taps = []
    for i in range(kernel_size):
        for j in range(kernel_size):
            # i + H = (H + span) - (span - i): an end counted back from the axis' end
            ends = [i - span if i < span else _TO_END, j - span if j < span else _TO_END]
            taps.append(graph.node('Slice', padded, graph.ints([i, j]), graph.ints(ends), axes))
    return taps


def _window_correlation(graph, queries, keys, kernel_size: int, padding_mode: str, op: str):
    """logits[:, p] = sum over channels of queries * (tap p of the padded keys)."""
    padded = _pad(graph, keys, kernel_size // 2, padding_mode, op)
    channels = graph.ints([1])
    logits = [graph.node('ReduceSum', graph.node('Mul', queries, tap), channels, keepdims=1)
              for tap in _taps(graph, padded, kernel_size)]
    return logits[0] if len(logits) == 1 else graph.node('Concat', *logits, axis=1)


def _weighted_sum(graph, taps: List, weights):
    """sum over taps p of taps[p] (B, C, H, W) * weights[:, p] (weights: (B, taps, H, W))."""
    if len(taps) == 1:
        return graph.node('Mul', taps[0], weights)
    # (B, 1, H, W) per tap: broadcast over the channels
    out = None
    for tap, weight in zip(taps, graph.split(weights, len(taps), axis=1)):
        term = graph.node('Mul', tap, weight)
        out = term if out is None else graph.node('Add', out, term)
    return out


def _adaptive_conv(graph, x, kernel, kernel_size: int, padding_mode: str):
    padded = _pad(graph, x, kernel_size // 2, padding_mode, 'adaptive_conv')
    return _weighted_sum(graph, _taps(graph, padded, kernel_size), kernel)


def _kernel_size_from_taps(taps, op: str = 'adaptive_conv', name: str = 'a kernel') -> int:
    """k from the k*k channels of ``name``, which the exported graph must know statically."""
    kernel_size = int(round(taps**0.5)) if isinstance(taps, int) else 0
    if kernel_size * kernel_size != taps:
        raise ValueError(f'{op}: ONNX export needs {name} of k*k channels known at '
                         f'export time, got {taps!r} channels')
    return kernel_size


def _static_sizes(op: str, name: str, shape) -> tuple:
    """The (height, width) of a 4-D ``shape`` as ints; refuses sizes unknown at export."""
    sizes = tuple(shape)[2:] if shape is not None and len(shape) == 4 else ()
    if len(sizes) != 2 or not all(isinstance(n, int) for n in sizes):
        raise ValueError(
            f'{op}: ONNX export needs the height and width of {name} fixed at export time '
            '(the rows and columns each tap reads are constants computed from them), got '
            f'shape {shape}; export without dynamic height and width axes')
    return sizes


def _neighbourhood_windows(graph, x, size, input_size, kernel_size: int, dilation: int,
                           border: str, op: str) -> List:
    """The k*k taps (t = ty*k + tx) of the window of low-res ``x`` (N, C, h, w) seen by
    every query of an (H, W) map, each (N, C, H, W): k Gathers of rows (h -> H), then k of
    columns (w -> W) per row tap."""
    if border not in NEIGHBOURHOOD_BORDERS:
        raise ValueError(f'{op}: border must be one of {NEIGHBOURHOOD_BORDERS}, got {border!r}')
    rows, cols = (neighbourhood_sources(n, m, kernel_size, dilation, border)
                  for n, m in zip(size, input_size))
    col_indices = [graph.indices(cols[:, tx]) for tx in range(kernel_size)]
    taps = []
    for ty in range(kernel_size):
        tap_rows = graph.node('Gather', x, graph.indices(rows[:, ty]), axis=2)
        taps.extend(graph.node('Gather', tap_rows, index, axis=3) for index in col_indices)
    return taps


def _neighbourhood_scores(graph, queries, keys, size, input_size, kernel_size: int,
                          dilation: int, border: str):
    """scores[:, t] = sum over channels of queries * (tap t of the keys' windows)."""
    channels = graph.ints([1])
    scores = [graph.node('ReduceSum', graph.node('Mul', queries, tap), channels, keepdims=1)
              for tap in _neighbourhood_windows(graph, keys, size, input_size, kernel_size,
                                                dilation, border,
                                                'neighbourhood_attention_scores')]
    return scores[0] if len(scores) == 1 else graph.node('Concat', *scores, axis=1)


def _neighbourhood_aggregate(graph, attn, values, size, input_size, kernel_size: int,
                             dilation: int, border: str):
    """out = sum over taps t of attn[:, t] * (tap t of the values' windows)."""
    return _weighted_sum(graph, _neighbourhood_windows(graph, values, size, input_size,
                                                       kernel_size, dilation, border,
                                                       'neighbourhood_attention_aggregate'),
                         attn)


# ----------------------------------------------------------------------------------------
# dynamo=False: TorchScript symbolics

# the public ops with an ONNX translation (the others exist for backward passes only)
TRANSLATED_OPS = ('window_correlation', 'window_cross_correlation', 'adaptive_conv',
                  'neighbourhood_attention_scores', 'neighbourhood_attention_aggregate')
_symbolics_registered = False


def translations_registered() -> bool:
    """Whether :func:`register_onnx_translations` has run in this process."""
    return _symbolics_registered


def _traced_sizes(g, index: int, value, op: str, name: str) -> tuple:
    """(height, width) of the op's input ``index`` as traced, refused where they may vary:
    the trace marks them dynamic (the input is a model input of dynamic size), or the model
    has an input of dynamic height or width and ONNX shape inference lost this input's
    sizes (``value``, its ONNX value), which then probably follow that input's."""
    from torch.onnx import symbolic_helper
    sizes = g.original_node.inputsAt(index).type().varyingSizes()
    inferred = symbolic_helper._get_tensor_sizes(value)
    if inferred is None or None in inferred[2:]:
        model_inputs = (v.type().varyingSizes() for v in g.graph.inputs()
                        if isinstance(v.type(), torch._C.TensorType))
        if any(s is not None and len(s) == 4 and None in s[2:] for s in model_inputs):
            sizes = inferred
    return _static_sizes(op, name, sizes)


def register_onnx_translations() -> None:
    """Registers the ops' symbolics with torch.onnx's TorchScript exporter
    (``torch.onnx.export(..., dynamo=False)``), for every opset >= 13. Idempotent; only
    the ``featup_mmseg::`` ops are registered."""
    global _symbolics_registered
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args('v', 'i', 's')
    def window_correlation(g, keys, kernel_size, padding_mode):
        return _window_correlation(_TorchScriptGraph(g), keys, keys, kernel_size, padding_mode,
                                   'window_correlation')

    @symbolic_helper.parse_args('v', 'v', 'i', 's')
    def adaptive_conv_backward_kernel(g, queries, keys, kernel_size, padding_mode):
        return _window_correlation(_TorchScriptGraph(g), queries, keys, kernel_size,
                                   padding_mode, 'window_cross_correlation')

    @symbolic_helper.parse_args('v', 'v', 's')
    def adaptive_conv(g, x, kernel, padding_mode):
        # k*k from the traced op's kernel: the ONNX graph's shape inference can lose it
        # (e.g. behind a Reshape whose target shape is computed)
        taps = g.original_node.inputsAt(1).type().varyingSizes()[1]
        return _adaptive_conv(_TorchScriptGraph(g), x, kernel, _kernel_size_from_taps(taps),
                              padding_mode)

    @symbolic_helper.parse_args('v', 'v', 'i', 'i', 's')
    def neighbourhood_attention_scores(g, queries, keys, kernel_size, dilation, border):
        op = 'neighbourhood_attention_scores'
        size = _traced_sizes(g, 0, queries, op, 'queries')
        input_size = _traced_sizes(g, 1, keys, op, 'keys')
        return _neighbourhood_scores(_TorchScriptGraph(g), queries, keys, size, input_size,
                                     kernel_size, dilation, border)

    @symbolic_helper.parse_args('v', 'v', 'i', 's')
    def neighbourhood_attention_aggregate(g, attn, values, dilation, border):
        op = 'neighbourhood_attention_aggregate'
        size = _traced_sizes(g, 0, attn, op, 'attn')
        input_size = _traced_sizes(g, 1, values, op, 'values')
        kernel_size = _kernel_size_from_taps(g.original_node.inputsAt(0).type().varyingSizes()[1],
                                             op, 'attn')
        return _neighbourhood_aggregate(_TorchScriptGraph(g), attn, values, size, input_size,
                                        kernel_size, dilation, border)

    for symbolic in (window_correlation, adaptive_conv_backward_kernel, adaptive_conv,
                     neighbourhood_attention_scores, neighbourhood_attention_aggregate):
        torch.onnx.register_custom_op_symbolic(f'featup_mmseg::{symbolic.__name__}', symbolic,
                                               MIN_OPSET)
    _symbolics_registered = True


# ----------------------------------------------------------------------------------------
# dynamo=True: onnxscript translations

def onnx_translation_table() -> Dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: the ops'
    translations as onnxscript functions that the exporter traces. Needs onnxscript."""
    try:
        from onnxscript import opset18 as op
    except ImportError as err:
        raise ImportError('featup_mmseg: exporting with dynamo=True needs onnxscript '
                          f'(pip install onnxscript): {err}') from None
    graph = _OnnxScriptGraph(op)

    # Parameters named as in the ops' schemas (csrc/bindings.cpp). The exporter passes the
    # int and str arguments as Python values, which fix the unrolled taps.
    def window_correlation(keys, kernel_size: int, padding_mode: str):
        return _window_correlation(graph, keys, keys, kernel_size, padding_mode,
                                   'window_correlation')

    def adaptive_conv_backward_kernel(grad, features, kernel_size: int, padding_mode: str):
        return _window_correlation(graph, grad, features, kernel_size, padding_mode,
                                   'window_cross_correlation')

    def adaptive_conv(features, kernel, padding_mode: str):
        return _adaptive_conv(graph, features, kernel, _kernel_size_from_taps(kernel.shape[1]),
                              padding_mode)

    def neighbourhood_attention_scores(queries, keys, kernel_size: int, dilation: int,
                                       border: str):
        op = 'neighbourhood_attention_scores'
        return _neighbourhood_scores(graph, queries, keys,
                                     _static_sizes(op, 'queries', queries.shape),
                                     _static_sizes(op, 'keys', keys.shape), kernel_size,
                                     dilation, border)

    def neighbourhood_attention_aggregate(attn, values, dilation: int, border: str):
        op = 'neighbourhood_attention_aggregate'
        return _neighbourhood_aggregate(graph, attn, values,
                                        _static_sizes(op, 'attn', attn.shape),
                                        _static_sizes(op, 'values', values.shape),
                                        _kernel_size_from_taps(attn.shape[1], op, 'attn'),
                                        dilation, border)

    ops = torch.ops.featup_mmseg
    return {ops.window_correlation.default: window_correlation,
            ops.adaptive_conv_backward_kernel.default: adaptive_conv_backward_kernel,
            ops.adaptive_conv.default: adaptive_conv,
            ops.neighbourhood_attention_scores.default: neighbourhood_attention_scores,
            ops.neighbourhood_attention_aggregate.default: neighbourhood_attention_aggregate}


# A module can declare input axes its export cannot leave dynamic, as a class attribute
# ``onnx_static_axes = {axis name: why}``; names of the model inputs' axes: 0 'batch' and,
# of 4-D inputs, 2 'height' and 3 'width'. export_onnx refuses a request to vary them.
ONNX_AXIS_NAMES = {0: 'batch', 2: 'height', 3: 'width'}


def _dynamic_axis_names(kwargs) -> set:
    """The axis names (ONNX_AXIS_NAMES) that torch.onnx.export's ``dynamic_axes`` or
    ``dynamic_shapes`` mark dynamic anywhere."""
    axes = set()
    for spec in (kwargs.get('dynamic_axes') or {}).values():
        axes.update(spec)  # a dict {axis: name} or a list of axes
    shapes = kwargs.get('dynamic_shapes') or ()
    for spec in (shapes.values() if isinstance(shapes, dict) else shapes):
        axes.update(spec or ())
    return {ONNX_AXIS_NAMES[axis] for axis in axes if axis in ONNX_AXIS_NAMES}


def check_dynamic_axes(model: torch.nn.Module, dynamic_axes) -> None:
    """Refuses to export ``model`` with any of the axis names ``dynamic_axes`` dynamic that
    one of its modules declares static (``onnx_static_axes``): the export would fix them
    and fail later, or run only at the exported size.

    Raises:
        ValueError: naming the module, the axes, why, and the axes it supports.
    """
    for module in model.modules():
        static = getattr(module, 'onnx_static_axes', {})
        refused = sorted(set(dynamic_axes) & set(static))
        if refused:
            supported = [name for name in ONNX_AXIS_NAMES.values() if name not in static]
            raise ValueError(
                f'export_onnx: {type(module).__name__} cannot be exported with a dynamic '
                f'{" and ".join(refused)} ({static[refused[0]]}); dynamic axes it supports: '
                f'{", ".join(supported) or "none (export at a fixed shape)"}')


def dynamo_export_available() -> bool:
    """Whether this torch's ``torch.onnx.export`` takes ``dynamo=`` (torch >= 2.5)."""
    return 'dynamo' in inspect.signature(torch.onnx.export).parameters


def export_onnx(model: torch.nn.Module, args: tuple, f, dynamo: bool = False, **kwargs):
    """``torch.onnx.export(model, args, f, dynamo=dynamo, **kwargs)`` of the model for
    inference, with the window ops translated to standard ONNX.

    The model is exported in eval mode under ``torch.no_grad()``, and every submodule's
    train/eval mode is restored afterwards. (The TorchScript exporter restores only the top
    module's mode, with ``model.train(mode)``, which turns the eval submodules of a
    train-mode wrapper into training mode; torch.export then exports them as training,
    dropout and drop-path included.) Returns what ``torch.onnx.export`` returns (an
    ``ONNXProgram`` for ``dynamo=True``). Dynamic axes that a module of the model cannot
    vary (:func:`check_dynamic_axes`) are refused before anything is traced.
    """
    check_dynamic_axes(model, _dynamic_axis_names(kwargs))
    if dynamo:
        if not dynamo_export_available():
            raise RuntimeError(f'torch {torch.__version__} has no torch.onnx.export(dynamo=True) '
                               '(torch >= 2.5 has); export with dynamo=False')
        table = {**onnx_translation_table(), **kwargs.pop('custom_translation_table', {})}
        kwargs.update(dynamo=True, custom_translation_table=table)
    else:
        register_onnx_translations()
        if dynamo_export_available():
            kwargs['dynamo'] = False
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return torch.onnx.export(model, args, f, **kwargs)
    finally:
        for module, training in modes:
            module.training = training
