"""Layout decisions the frontend asks the compiler for: which data layout a convolution and its input gradient
use on a device, and when a reduction to one value is split in two.

The frontend builds whatever layout it is told; the reasons (vector lanes, work-items, rounding) belong to the
code generator, so the numbers live here. A device's vector width is read in one function, `vector_width`.
"""

from __future__ import annotations

import enum


class ConvLayout(enum.Enum):
    """How conv2d's forward is composed."""

    WINDOWS = enum.auto()  # the window view of the input times the weight, reduced
    # the windows copied out as columns (n, g, oh, ow, cin_g*kh*kw): the reduce runs along memory that both the
    # columns and the weight hold contiguously (a matrix product)
    COLUMNS = enum.auto()
    # the weight copied channel-last, so that vector lanes run over output channels
    CHANNEL_LAST_WEIGHT = enum.auto()


class InputGradLayout(enum.Enum):
    """How conv2d's input gradient is composed."""

    # the output gradient spread out by the stride, fully padded, convolved with the flipped weight
    TRANSPOSED_CONV = enum.auto()
    # the gradient of the window columns as a matrix product, then col2im; columns (n, cin, kh, kw, oh, ow):
    # lanes over the output pixels, and col2im reads each kernel offset's rows contiguously
    COLUMNS_OVER_PIXELS = enum.auto()
    # the same with columns (n, oh, ow, cin, kh, kw): lanes over cin*kh*kw, for few output pixels
    COLUMNS_OVER_CHANNELS = enum.auto()


# The conv layouts were measured with 16-lane vectors (AVX-512 CPUs: LLVM and PoCL) and checked with scalar code
# on a GPU (the ResNet-18 step against PyTorch); narrower vectors were not measured, so they keep these layouts.
_MEASURED_LANES = 16


def vector_width(device: str) -> int:
    """float32 lanes of the device's vectors (1: scalar code, as on a GPU). The one place that reads it."""
    from lazygrad import backends

    return backends.get(device).capabilities.vector_width


def _lanes(device: str) -> tuple[int, int]:
    """(full, half): the vector widths the lowering tries, full first (codegen.lowering.choose_options)."""
    full = max(vector_width(device), _MEASURED_LANES)
    return full, full // 2


def conv_layout(
    device: str, out_width: int, out_channels_per_group: int, plain_weight: bool, strided: bool = False
) -> ConvLayout:
    """`plain_weight`: the weight is a whole contiguous buffer (not a view, such as the flipped weight of an
    input gradient), so the columns' matrix product reads it as it is. `strided`: a stride above 1 along the rows."""
    full, half = _lanes(device)
    if out_width % half and plain_weight:
        # output rows that not even a half-width vector divides give lanes no contiguous output row
        return ConvLayout.COLUMNS
    # lanes along a strided conv's output rows read its windows in wide loads and shuffles: over the output
    # channels of a channel-last weight each input value is one broadcast scalar (ResNet-18's 7x7 stride-2 stem
    # at 8x3x224x224, one thread: 42 -> 25 ms)
    lanes_over_rows_shuffle = strided and vector_width(device) > 1
    if (out_width % full or lanes_over_rows_shuffle) and out_channels_per_group % full == 0:
        # a weight seen through a view: copied channel-last, lanes go over output channels instead of rows
        return ConvLayout.CHANNEL_LAST_WEIGHT
    return ConvLayout.WINDOWS


def conv_input_grad_layout(
    device: str, groups: int, input_width: int, out_pixels: int, plain_weight: bool, strided: bool = False
) -> InputGradLayout:
    """`out_pixels`: oh * ow of the output gradient; `plain_weight` as for conv_layout; `strided`: a stride above 1."""
    full, _ = _lanes(device)
    if groups == 1 and input_width % full and plain_weight:
        if not strided and input_width >= _TRANSPOSED_MIN_WIDTH and vector_width(device) > 1:
            # rows of 28 or more: the transposed convolution, its flipped weight copied channel-last (lanes over the
            # input channels, as conv_layout gives it) costs less than columns 9x the input written, read and put
            # back (ResNet-18 at 8x3x224x224, one thread, in the step: layer1's four input gradients 81 -> 69 ms,
            # layer2's three 63 -> 58 ms; at 14x14 the transposed convolution was slower, 63 -> 81 ms)
            return InputGradLayout.TRANSPOSED_CONV
        # narrow feature maps: the transposed convolution's rows would not fill the vectors
        if out_pixels % full == 0:
            return InputGradLayout.COLUMNS_OVER_PIXELS
        return InputGradLayout.COLUMNS_OVER_CHANNELS
    return InputGradLayout.TRANSPOSED_CONV


# a stride-1 conv's input gradient over input rows this wide or wider is the transposed convolution on a CPU
_TRANSPOSED_MIN_WIDTH = 28


def weight_grad_batch_parts(device: str, batch: int, outputs: tuple, reduce_length: int) -> int:
    """Slices of the batch whose partial weight gradients are summed afterwards (1: one reduce over all of it).

    A weight gradient has few outputs (`outputs`: its product's two sides, e.g. cout and cin*kh*kw) and a long
    reduce (batch x pixels). On a device with work-groups its product is tiled through local memory, one
    work-group per block of outputs: too few blocks leave most compute units idle (an H200's layer-1 weight
    gradient at batch 32, 64 x 576 outputs, ran at 6.5 TFLOP/s where products with enough blocks ran at 15-19).
    Slicing the batch multiplies the blocks; CPUs keep one reduce (their threads split the outputs)."""
    from lazygrad import backends
    from lazygrad.codegen import tiling

    capabilities = backends.get(device).capabilities
    if not capabilities.group_reduce:
        return 1
    tile = tiling.PREFERRED[0]
    blocks = -(-outputs[0] // tile.block_m) * -(-outputs[1] // tile.block_n)
    parts = 1
    while (
        blocks * parts < capabilities.compute_units
        and batch % (2 * parts) == 0
        and reduce_length // (2 * parts) >= _MIN_PART_LENGTH
    ):
        parts *= 2
    return parts


def weight_grad_channel_last(device: str, stride: tuple, out_channels: int, grad_elements: int) -> bool:
    """Whether a (single-group) conv2d's weight gradient reads the output gradient (`grad_elements` of it) from a
    channel-last copy (n, oh, ow, cout), so that vector lanes run over output channels.

    Read as it is, the output gradient's contiguous dim is the output row, a reduce dim: lanes along it read the
    input's windows with the stride in between (gathers where the stride is above 1). Channel-last, the lanes run
    along the output channels and each input value is one broadcast scalar: ResNet-18's 7x7 stride-2 stem at
    1x3x64x64, 0.64 -> 0.23 ms (the copy is written by the kernel that makes the gradient). Each block of
    output channels reads the whole copy again, though, so a copy beyond the cache costs more than the lanes buy:
    at 8x3x224x224 (a 25 MB copy) the stem's weight gradient inside the step took longer than read as it is."""
    full, _ = _lanes(device)
    return (
        vector_width(device) > 1
        and any(s > 1 for s in stride)
        and out_channels % full == 0
        and grad_elements <= _CHANNEL_LAST_GRAD_MAX_ELEMENTS
    )


_CHANNEL_LAST_GRAD_MAX_ELEMENTS = 1 << 18  # 1 MiB of float32: a copy that stays in a core's L2


def weight_grad_input_channel_last(
    device: str, stride: tuple, groups: int, in_channels: int, out_width: int, reduce_length: int
) -> bool:
    """Whether a conv2d's weight gradient over windows reads its input from a channel-last copy (n, h, w, cin), so
    that vector lanes run over the input channels, each output-gradient value a broadcast scalar.

    Read as it is, the lanes run along the output rows, which a stride-1 conv's windows read contiguously; but rows
    that do not fill a full vector (56 on 16 lanes) get half-width ones. Over input channels that fill the vectors,
    the copy (one read and write of the input) buys full-width lanes: ResNet-18's layer1 at 8x3x224x224, one thread,
    alone: 22 -> 15 ms plus a 0.8 ms copy. Only for long reduces (batch x pixels of 4,096 or more): at 1x3x64x64 the
    kernels are short and were not measured."""
    full, _ = _lanes(device)
    return (
        vector_width(device) > 1
        and all(s == 1 for s in stride)
        and groups == 1
        and in_channels % full == 0
        and out_width % full != 0
        and reduce_length >= _CHANNEL_LAST_INPUT_MIN_REDUCE
    )


_CHANNEL_LAST_INPUT_MIN_REDUCE = 4096


_MIN_PART_LENGTH = 2048  # a slice shorter than this is not worth its partial results' memory traffic

# A reduction to one value of this many elements or more runs in two kernels, with this many partial results.
# The same on every device: on a GPU one output would run on one work-item, on a CPU on one thread, and a float
# sum of a million values in one running total is several hundred times further from the exact sum.
_SPLIT_REDUCE_MIN_SIZE = 1 << 16
_SPLIT_REDUCE_PARTS = 1024


def split_reduce_parts(size: int) -> int:
    """The partial results a reduction of `size` elements to one value is built from (1: not split)."""
    return _SPLIT_REDUCE_PARTS if size >= _SPLIT_REDUCE_MIN_SIZE else 1


# A linear layer's weight is stored (out_features, in_features): read as it is, the product's only contiguous dim is
# the reduce, so vector lanes run along it and every output ends with a horizontal sum of its lanes, which for a
# reduce of 256 (a transformer's width) costs a third as much as the multiply-adds. Copied transposed
# (in_features, out_features), the lanes run along the outputs and need no horizontal sum: GPT's forward products
# (2048 rows, 256 -> 768, 1024, 256) ran 7-27% faster, single thread. The copy reads the weight once (a 1024x256
# weight: 0.1 ms alone, 0.26 ms inside GPT's step, with the lowering's tile for transposed copies), so it pays for
# itself only over many rows.
_TRANSPOSED_WEIGHT_MIN_ROWS = 1024


def linear_weight_transposed(device: str, rows: int, plain_weight: bool) -> bool:
    """Whether a linear layer over `rows` input rows copies its weight transposed first, so that vector lanes run
    along the output features (CPUs: devices with vector lanes). `plain_weight`: the weight is a whole
    contiguous buffer (a view may already read transposed)."""
    return vector_width(device) > 1 and plain_weight and rows >= _TRANSPOSED_WEIGHT_MIN_ROWS


# A convolution through columns (n, oh, ow, cin*kh*kw) multiplies with lanes along the reduce, which both operands
# hold contiguously, and ends each chunk in horizontal sums. With a transposed copy of the weight (or its panels,
# below) the lanes run along the output channels and the output is moved back to (n, cout, oh, ow), a small copy.
# ResNet-18 at 8x3x224x224, one thread, alone, kernels summed (/tmp script): 512 -> 512 at 7x7 19.7 -> 15.5 ms
# (panels), 256 -> 256 at 14x14 20.5 -> 15.7, 128 -> 128 at 28x28 22.3 -> 17.6, 256 -> 512 stride 2 10.1 -> 7.9,
# 64 -> 128 stride 2 11.4 -> 10.3 (the weight's copy included). Over few rows the copy costs more than it saves (at
# 1x3x64x64, layer 4's 4 rows: 0.45 -> 2.1 ms), so only from this many rows (n * oh * ow):
_COLUMNS_TRANSPOSED_MIN_ROWS = 256


def columns_weight_transposed(device: str, rows: int, groups: int) -> bool:
    """Whether a single-group conv through columns multiplies them with its weight transposed, lanes along the
    output channels (16-lane devices, where it was measured). Not over a run-time (symbolic) number of rows."""
    return (
        vector_width(device) >= _MEASURED_LANES
        and groups == 1
        and isinstance(rows, int)
        and rows >= _COLUMNS_TRANSPOSED_MIN_ROWS
    )


# A product whose second operand (k, n) is read in vector lanes along its rows: with rows of 2 KiB or more, the
# rows of a register tile's strip (4 vectors wide) lie a multiple of 2 KiB apart, so the k rows one output tile
# walks fall into a few of L1's sets and evict each other, and every load comes from L2. Copied into panels
# (n / width, k, width), one tile's strip is contiguous. Alone, one thread, 2048 rows (products of 16-lane vectors,
# 4x4 tiles; /tmp script): 256 -> 1024 148 -> 167 GFLOP/s, 256 -> 768 153 -> 166, 512 -> 512 142 -> 169, 256 -> 512
# 157 -> 167; rows of 1 KiB (256 -> 256, 1024 -> 256) gained nothing; panels 32 wide lost (148 -> 141), 128 wide
# matched 64. Fewer rows than columns too, since the lowering keeps a register tile inside one panel
# (`_register_tile`): 1024 rows, 256 -> 3072 24.1-24.6 -> 12.1-12.5 ms, 2048 -> 3072 155-158 -> 121-123; 2048 rows,
# 768 -> 3072 260-269 -> 67 ms (rows of 12 KiB also collide in L2). Measured on 16-lane vectors only, so
# narrower ones keep the plain operand.
_PANEL_VECTORS = 4
_PANEL_MIN_ROW_BYTES = 2048


def product_panel_width(device: str, columns: int, itemsize: int) -> int:
    """The width of the panels a product's second operand (k, `columns`) is copied into first, or 0 to read it as
    stored. Asked only where that copy is small beside the product: a linear layer over many rows, for its
    weight's two products (the forward's transposed copy happens anyway), and a conv through columns that takes
    its weight transposed (columns_weight_transposed), for its weight in the forward and the input gradient."""
    lanes = vector_width(device)
    width = _PANEL_VECTORS * lanes
    if lanes < _MEASURED_LANES or columns * itemsize < _PANEL_MIN_ROW_BYTES or columns % width:
        return 0
    return width


# A matrix read down its columns in vector lanes along its rows (a linear layer's weight gradient, `dy^T @ x`, walks
# x's rows along the reduce): rows of 2 KiB or more lie a multiple of 2 KiB apart, so the rows one register tile walks
# fall into a few of L1's sets and evict each other. Stored with one cache line more per row, consecutive rows start
# in consecutive sets. Where the matrix is still to be computed by an elementwise kernel (GPT's GELU output), that
# kernel writes the padded rows itself, so the padding costs no copy. Alone, one thread, 2048 rows (/tmp script,
# `dy^T @ x` with x stored padded): 1024 -> 256 10.0 -> 7.4 ms, 2048 -> 256 18.8 -> 17.2, 512 -> 256 4.0 -> 3.7,
# 768 -> 256 6.1 -> 5.8, 1024 -> 512 18.1 -> 18.0. Measured on 16-lane vectors only.
_ROW_PAD_BYTES = 64


def padded_row_length(device: str, columns: int, itemsize: int) -> int:
    """The row stride (in elements) a matrix of `columns`-long rows that a product reads down its columns is stored
    with: `columns`, or a cache line more where its rows would collide in L1."""
    row_bytes = columns * itemsize
    if vector_width(device) < _MEASURED_LANES or row_bytes < _PANEL_MIN_ROW_BYTES or _ROW_PAD_BYTES % itemsize:
        return columns
    return columns + _ROW_PAD_BYTES // itemsize


# Causal attention over this many positions or more computes its queries in blocks, each against the keys it can
# see, so that the products skip part of the masked triangle: GPT's attention at (16, 4, 128, 64), forward and
# backward, 11.1-12.3 -> 8.5-9.6 ms on one thread with 2 blocks (a quarter of the products' work skipped); 4 blocks
# (5/8 of the work, 112 more kernels per step) made the step slower than 2. Measured on CPUs (16-lane vectors, LLVM);
# on a GPU the extra, smaller kernels were not measured, so it keeps one block.
_CAUSAL_BLOCKS_MIN_LENGTH = 128
_CAUSAL_BLOCKS = 2


def causal_query_blocks(device: str, query_shape: tuple, key_shape: tuple) -> int:
    """Blocks of queries a causal attention is computed in (1: one product over all keys). Only where queries and
    keys are the same positions (4-d: batch, heads, length, dim) and the length divides into the blocks."""
    blocks, length = _CAUSAL_BLOCKS, query_shape[-2]
    if len(query_shape) != 4 or len(key_shape) != 4 or key_shape[-2] != length or not isinstance(length, int):
        return 1
    if vector_width(device) == 1 or length < _CAUSAL_BLOCKS_MIN_LENGTH or length % blocks:
        return 1
    return blocks
