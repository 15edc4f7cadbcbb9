"""The layout decisions the frontend asks of the compiler (lazygrad.codegen.layout).

- Every vector width gets the layouts measured with 16 lanes (a GPU's 1, AVX2's 8, AVX-512's 16).
- Each conv2d layout, forced, gives PyTorch's output and gradients: the choice is one of speed only.
- A strided conv2d's weight gradient reads a channel-last copy of the output gradient only on a device with vector
  lanes, for output channels that fill them and an output gradient that stays in the cache; either way it gives
  PyTorch's gradients, second order included.
- A big reduction to one value, split in two, pads with the reduction's identity (0, or the dtype's least value).
- A linear layer over many rows copies its weight transposed on a device with vector lanes (only there, only for a
  whole weight buffer); either way it gives PyTorch's output and gradients, second order included.
- Its input, where an elementwise kernel computes it, is stored in padded rows (rows of 2 KiB or more, 16 lanes):
  the same values and gradients, second order included; a realized input is read as it is.
"""

import numpy as np
import pytest
import torch

import lazygrad
from lazygrad.codegen import layout
from lazygrad.codegen.layout import ConvLayout, InputGradLayout


def layouts_on_16_lanes(out_width, out_channels, plain_weight, strided=False, width=16):
    """conv2d's choice before it moved to the compiler, when the frontend held the lane counts (and, since, a
    strided conv's channel-last weight on a device with vector lanes)."""
    if out_width % 8 and plain_weight:
        return ConvLayout.COLUMNS
    if (out_width % 16 or (strided and width > 1)) and out_channels % 16 == 0:
        return ConvLayout.CHANNEL_LAST_WEIGHT
    return ConvLayout.WINDOWS


def input_grad_layouts_on_16_lanes(groups, input_width, out_pixels, plain_weight, strided=False, width=16):
    """(and, since, the transposed convolution for stride 1 over rows of 28 or more on a device with lanes)"""
    if groups == 1 and input_width % 16 and plain_weight:
        if not strided and input_width >= 28 and width > 1:
            return InputGradLayout.TRANSPOSED_CONV
        return InputGradLayout.COLUMNS_OVER_PIXELS if out_pixels % 16 == 0 else InputGradLayout.COLUMNS_OVER_CHANNELS
    return InputGradLayout.TRANSPOSED_CONV


@pytest.mark.backend_independent
@pytest.mark.parametrize("width", [1, 4, 8, 16])
def test_every_vector_width_gets_the_layouts_measured_on_16_lanes(monkeypatch, width):
    monkeypatch.setattr(layout, "vector_width", lambda device: width)
    for out_width in (1, 2, 4, 7, 8, 14, 16, 28, 32, 56):
        for channels in (3, 16, 64):
            for plain in (True, False):
                for strided in (False, True):
                    got = layout.conv_layout("llvm", out_width, channels, plain, strided)
                    assert got == layouts_on_16_lanes(out_width, channels, plain, strided, width), (
                        out_width,
                        channels,
                        plain,
                        strided,
                    )
                for groups in (1, 2):
                    for pixels in (4, 16, 49, 64):
                        for strided in (False, True):
                            got = layout.conv_input_grad_layout("llvm", groups, out_width, pixels, plain, strided)
                            want = input_grad_layouts_on_16_lanes(groups, out_width, pixels, plain, strided, width)
                            assert got == want, (groups, out_width, pixels, plain, strided)


CONVS = {
    "padding": dict(x=(2, 3, 7, 6), w=(4, 3, 3, 3), padding=1),
    "stride-groups": dict(x=(1, 4, 9, 8), w=(4, 2, 3, 3), stride=2, padding=1, groups=2),
    "dilation": dict(x=(1, 2, 9, 9), w=(3, 2, 2, 3), dilation=2, padding=(1, 0)),
}
# the columns' input gradient is built for groups=1 only
LAYOUT_CASES = [
    pytest.param(forward, grad, case, id=f"{forward.name}-{grad.name}-{name}")
    for forward in ConvLayout
    for grad in InputGradLayout
    for name, case in CONVS.items()
    if grad is InputGradLayout.TRANSPOSED_CONV or case.get("groups", 1) == 1
]


@pytest.mark.parametrize("forward_layout, grad_layout, case", LAYOUT_CASES)
def test_each_conv_layout_gives_torch_values_and_gradients(monkeypatch, forward_layout, grad_layout, case):
    case = dict(case)
    monkeypatch.setattr(layout, "conv_layout", lambda *args: forward_layout)
    monkeypatch.setattr(layout, "conv_input_grad_layout", lambda *args: grad_layout)
    rng = np.random.default_rng(0)
    x, w = (rng.standard_normal(case.pop(k)).astype(np.float32) for k in ("x", "w"))
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    expected = torch.nn.functional.conv2d(tx, tw, **case)
    projection = rng.standard_normal(tuple(expected.shape)).astype(np.float32)
    (expected * torch.tensor(projection)).sum().backward()
    lx, lw = lazygrad.Tensor(x, requires_grad=True), lazygrad.Tensor(w, requires_grad=True)
    out = lx.conv2d(lw, **case)
    (out * lazygrad.Tensor(projection)).sum().backward()
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lx.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lw.grad.numpy(), tw.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("panels", [0, 2], ids=["transposed", "panels"])
@pytest.mark.parametrize("name", sorted(CONVS))
def test_columns_times_the_transposed_weight_give_torch_values_and_gradients(monkeypatch, name, panels):
    # forced on small convs: the columns' product with the weight transposed (or in panels of 2 columns, where they
    # divide), lanes along the output channels, and the input gradient through the weight's panels (where they
    # divide cin*kh*kw); a grouped conv keeps the plain products. Second order included (the tensor path).
    seen, grad_conv = [], InputGradLayout.TRANSPOSED_CONV

    def decide(device, rows, groups):
        seen.append((rows, groups))
        return groups == 1

    monkeypatch.setattr(layout, "conv_layout", lambda *args: ConvLayout.COLUMNS)
    columns_for_one_group = {1: InputGradLayout.COLUMNS_OVER_PIXELS}  # (built for one group only)
    monkeypatch.setattr(
        layout, "conv_input_grad_layout", lambda device, groups, *rest: columns_for_one_group.get(groups, grad_conv)
    )
    monkeypatch.setattr(layout, "columns_weight_transposed", decide)
    monkeypatch.setattr(layout, "product_panel_width", lambda device, columns, itemsize: panels * (columns % 2 == 0))
    case = dict(CONVS[name])
    rng = np.random.default_rng(1)
    x, w = (rng.standard_normal(case.pop(k)).astype(np.float32) for k in ("x", "w"))
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    expected = torch.nn.functional.conv2d(tx, tw, **case)
    projection = rng.standard_normal(tuple(expected.shape)).astype(np.float32)
    loss = (expected * torch.tensor(projection)).sum()
    (gx,) = torch.autograd.grad(loss, tx, create_graph=True)
    (loss + (gx * gx).sum()).backward()
    lx, lw = lazygrad.Tensor(x, requires_grad=True), lazygrad.Tensor(w, requires_grad=True)
    out = lx.conv2d(lw, **case)
    lloss = (out * lazygrad.Tensor(projection)).sum()
    (lgx,) = lazygrad.grad(lloss, lx, create_graph=True)
    (lloss + (lgx * lgx).sum()).backward()
    assert seen and seen[0][0] == expected.shape[0] * expected.shape[2] * expected.shape[3], seen
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lgx.numpy(), gx.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lx.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lw.grad.numpy(), tw.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_a_conv_input_gradient_through_panels_gives_torch_values(monkeypatch):
    # first order (the graph-node path): a 1x1 conv, so that cin*kh*kw = 4 divides into panels of 2
    monkeypatch.setattr(layout, "conv_layout", lambda *args: ConvLayout.COLUMNS)
    monkeypatch.setattr(layout, "conv_input_grad_layout", lambda *args: InputGradLayout.COLUMNS_OVER_CHANNELS)
    monkeypatch.setattr(layout, "columns_weight_transposed", lambda device, rows, groups: True)
    monkeypatch.setattr(layout, "product_panel_width", lambda device, columns, itemsize: 2 * (columns % 2 == 0))
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 4, 5, 7)).astype(np.float32), rng.standard_normal((6, 4, 1, 1)).astype(np.float32)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    expected = torch.nn.functional.conv2d(tx, tw, stride=2)
    projection = rng.standard_normal(tuple(expected.shape)).astype(np.float32)
    (expected * torch.tensor(projection)).sum().backward()
    lx, lw = lazygrad.Tensor(x, requires_grad=True), lazygrad.Tensor(w, requires_grad=True)
    (lx.conv2d(lw, stride=2) * lazygrad.Tensor(projection)).sum().backward()
    np.testing.assert_allclose(lx.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lw.grad.numpy(), tw.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.backend_independent
def test_columns_take_a_transposed_weight_only_over_many_rows_of_one_group_with_16_lanes(monkeypatch):
    for width, rows, groups, expected in [
        (16, 256, 1, True),
        (16, 6272, 1, True),
        (16, 255, 1, False),  # the weight's copy would cost more than the lanes save (1x3x64x64's layer 4)
        (16, 6272, 2, False),  # grouped: the plain product
        (8, 6272, 1, False),  # 8 lanes: not measured
        (1, 6272, 1, False),  # scalar code (a GPU)
    ]:
        monkeypatch.setattr(layout, "vector_width", lambda device, width=width: width)
        assert layout.columns_weight_transposed("llvm", rows, groups) is expected, (width, rows, groups)


@pytest.mark.backend_independent
def test_a_channel_last_weight_gradient_only_for_strided_convs_with_lanes_over_output_channels(monkeypatch):
    for width in (1, 8, 16):
        monkeypatch.setattr(layout, "vector_width", lambda device, width=width: width)
        for stride in ((1, 1), (2, 2), (1, 2)):
            for channels in (3, 16, 64):
                for elements in (1 << 12, 1 << 18, (1 << 18) + 1):
                    expected = width > 1 and stride != (1, 1) and channels % 16 == 0 and elements <= 1 << 18
                    got = layout.weight_grad_channel_last("llvm", stride, channels, elements)
                    assert got == expected, (width, stride, channels, elements)


@pytest.mark.parametrize("channel_last", [False, True], ids=["as-stored", "channel-last"])
def test_a_strided_weight_gradient_gives_torch_values_in_either_layout(monkeypatch, channel_last):
    """A small ResNet stem (7x7, stride 2, padding 3) read through the window view (not the columns)."""
    monkeypatch.setattr(layout, "conv_layout", lambda *args: ConvLayout.WINDOWS)
    monkeypatch.setattr(layout, "weight_grad_channel_last", lambda *args: channel_last)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 13, 11)).astype(np.float32), rng.standard_normal((16, 3, 7, 7)).astype(np.float32)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    expected = torch.nn.functional.conv2d(tx, tw, stride=2, padding=3)
    projection = rng.standard_normal(tuple(expected.shape)).astype(np.float32)
    (tgw,) = torch.autograd.grad((expected * torch.tensor(projection)).sum(), tw, create_graph=True)
    (tgw * tgw).sum().backward()  # second order: through the weight gradient into the input
    lx, lw = lazygrad.Tensor(x, requires_grad=True), lazygrad.Tensor(w, requires_grad=True)
    out = lx.conv2d(lw, stride=2, padding=3)
    (lgw,) = lazygrad.grad((out * lazygrad.Tensor(projection)).sum(), lw, create_graph=True)
    (lgw * lgw).sum().backward()
    np.testing.assert_allclose(lgw.numpy(), tgw.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lx.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.backend_independent
def test_a_channel_last_input_only_for_long_stride_1_weight_gradients_over_whole_vectors_of_channels(monkeypatch):
    for width in (1, 8, 16):
        monkeypatch.setattr(layout, "vector_width", lambda device, width=width: width)
        for stride in ((1, 1), (2, 2)):
            for channels in (3, 16, 64):
                for out_width in (16, 56):
                    for length in (4095, 4096):
                        expected = (
                            width > 1 and stride == (1, 1) and channels % 16 == 0 and out_width == 56 and length == 4096
                        )
                        got = layout.weight_grad_input_channel_last("llvm", stride, 1, channels, out_width, length)
                        assert got == expected, (width, stride, channels, out_width, length)
                        assert not layout.weight_grad_input_channel_last("llvm", stride, 2, channels, out_width, length)


@pytest.mark.parametrize("channel_last", [False, True], ids=["as-stored", "channel-last"])
def test_a_weight_gradient_over_windows_gives_torch_values_with_its_input_in_either_layout(monkeypatch, channel_last):
    """A stride-1 3x3 conv whose weight gradient reads the window view of its input, as stored or channel-last;
    second order too (through the weight gradient into the input)."""
    monkeypatch.setattr(layout, "conv_layout", lambda *args: ConvLayout.WINDOWS)
    monkeypatch.setattr(layout, "weight_grad_input_channel_last", lambda *args: channel_last)
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 16, 9, 7)).astype(np.float32), rng.standard_normal((4, 16, 3, 3)).astype(np.float32)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    expected = torch.nn.functional.conv2d(tx, tw, padding=1)
    projection = rng.standard_normal(tuple(expected.shape)).astype(np.float32)
    (tgw,) = torch.autograd.grad((expected * torch.tensor(projection)).sum(), tw, create_graph=True)
    (tgw * tgw).sum().backward()
    lx, lw = lazygrad.Tensor(x, requires_grad=True), lazygrad.Tensor(w, requires_grad=True)
    out = lx.conv2d(lw, padding=1)
    (lgw,) = lazygrad.grad((out * lazygrad.Tensor(projection)).sum(), lw, create_graph=True)
    (lgw * lgw).sum().backward()
    np.testing.assert_allclose(lgw.numpy(), tgw.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lx.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.backend_independent
def test_a_reduction_to_one_value_splits_from_65536_elements():
    assert layout.split_reduce_parts(65535) == 1
    assert layout.split_reduce_parts(65536) == 1024


@pytest.mark.parametrize("dtype", [np.int32, np.float32], ids=["int32", "float32"])
def test_a_split_max_of_negative_values_pads_with_the_least_value(dtype):
    # 70,001 is no multiple of 1,024 partial results: the padding must not win the max (0 would)
    values = -np.arange(5, 70_006).astype(dtype)
    assert lazygrad.tensor(values).max().item() == -5
    assert lazygrad.tensor(values).sum().item() == pytest.approx(float(values.astype(np.float64).sum()), rel=1e-6)


@pytest.mark.backend_independent
def test_a_linear_weight_is_copied_transposed_only_over_many_rows_with_lanes(monkeypatch):
    for width, rows, plain, expected in [
        (16, 1024, True, True),
        (8, 4096, True, True),
        (16, 1023, True, False),  # the copy would cost more than the lanes save
        (16, 4096, False, False),  # a view of a weight may already read transposed
        (1, 4096, True, False),  # scalar code (a GPU): no lanes to move
    ]:
        monkeypatch.setattr(layout, "vector_width", lambda device, width=width: width)
        assert layout.linear_weight_transposed("llvm", rows, plain) is expected, (width, rows, plain)


@pytest.mark.parametrize("transposed", [True, False], ids=["transposed-copy", "as-stored"])
def test_linear_gives_torch_values_and_gradients_in_either_weight_layout(monkeypatch, transposed):
    seen = []

    def decide(device, rows, plain):
        seen.append((rows, plain))
        return transposed

    monkeypatch.setattr(layout, "linear_weight_transposed", decide)
    rng = np.random.default_rng(0)
    x, w, b, projection = (rng.standard_normal(s).astype(np.float32) for s in ((2, 5, 8), (6, 8), (6,), (2, 5, 6)))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    expected = torch.nn.functional.linear(tx, tw, tb)
    loss = (expected * torch.tensor(projection)).sum()
    (gx,) = torch.autograd.grad(loss, tx, create_graph=True)
    (loss + (gx * gx).sum()).backward()  # the second term: a second-order gradient in the weight
    lx, lw, lb = (lazygrad.Tensor(a, requires_grad=True) for a in (x, w, b))
    out = lazygrad.nn.functional.linear(lx, lw, lb)
    lloss = (out * lazygrad.Tensor(projection)).sum()
    (lgx,) = lazygrad.grad(lloss, lx, create_graph=True)
    (lloss + (lgx * lgx).sum()).backward()
    assert seen == [(10, True)]
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lgx.numpy(), gx.detach().numpy(), rtol=1e-4, atol=1e-5)
    for mine, theirs in ((lx, tx), (lw, tw), (lb, tb)):
        np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.backend_independent
def test_a_product_operand_is_copied_into_panels_only_for_long_rows_on_16_lanes(monkeypatch):
    for width, columns, itemsize, expected in [
        (16, 512, 4, 64),  # rows of 2 KiB: panels of 4 vectors
        (16, 3072, 4, 64),
        (16, 256, 4, 0),  # rows of 1 KiB spread over L1's sets: nothing to gain (measured)
        (16, 1024, 2, 64),  # float16 rows of 2 KiB
        (16, 520, 4, 0),  # no whole number of panels
        (8, 1024, 4, 0),  # 8 lanes: not measured
        (1, 4096, 4, 0),  # scalar code (a GPU)
    ]:
        monkeypatch.setattr(layout, "vector_width", lambda device, width=width: width)
        assert layout.product_panel_width("llvm", columns, itemsize) == expected, (width, columns, itemsize)


def _linear_against_torch(x, w, b, projection, second_order: bool, tanh_first: bool = False):
    """linear(x) (or linear(tanh(x))) and its gradients, second order too if asked, against torch's."""
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    expected = torch.nn.functional.linear(torch.tanh(tx) if tanh_first else tx, tw, tb)
    loss = (expected * torch.tensor(projection)).sum()
    lx, lw, lb = (lazygrad.Tensor(a, requires_grad=True) for a in (x, w, b))
    out = lazygrad.nn.functional.linear(lx.tanh() if tanh_first else lx, lw, lb)
    lloss = (out * lazygrad.Tensor(projection)).sum()
    if second_order:
        (gx,) = torch.autograd.grad(loss, tx, create_graph=True)
        (loss + (gx * gx).sum()).backward()
        (lgx,) = lazygrad.grad(lloss, lx, create_graph=True)
        (lloss + (lgx * lgx).sum()).backward()
        np.testing.assert_allclose(lgx.numpy(), gx.detach().numpy(), rtol=1e-4, atol=1e-4)
    else:
        loss.backward()
        lloss.backward()
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-4, atol=1e-4)
    for mine, theirs in ((lx, tx), (lw, tw), (lb, tb)):
        np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.backend_independent
def test_rows_are_padded_only_from_2_kib_on_16_lanes(monkeypatch):
    for width, columns, itemsize, expected in [
        (16, 1024, 4, 1040),  # rows of 4 KiB: one cache line more
        (16, 512, 4, 528),
        (16, 256, 4, 256),  # rows of 1 KiB: nothing to gain (measured)
        (16, 1024, 2, 1056),  # float16 rows of 2 KiB
        (8, 1024, 4, 1024),  # 8 lanes: not measured
        (1, 4096, 4, 4096),  # scalar code (a GPU)
    ]:
        monkeypatch.setattr(layout, "vector_width", lambda device, width=width: width)
        assert layout.padded_row_length("llvm", columns, itemsize) == expected, (width, columns, itemsize)


@pytest.mark.parametrize("second_order", [False, True], ids=["first-order", "second-order"])
def test_a_linear_input_computed_elementwise_is_stored_in_padded_rows(monkeypatch, second_order):
    # rows of 8 stored 11 apart (forced): the kernel computing tanh(x) writes them (rows, 11), the products read
    # them through the view; a realized input is read as it is. Torch's values and gradients either way.
    monkeypatch.setattr(layout, "linear_weight_transposed", lambda device, rows, plain: True)
    monkeypatch.setattr(layout, "padded_row_length", lambda device, columns, itemsize: columns + 3)
    rng = np.random.default_rng(6)
    x, w, b, projection = (rng.standard_normal(s).astype(np.float32) for s in ((2, 5, 8), (12, 8), (12,), (2, 5, 12)))
    for elementwise in (True, False):
        with lazygrad.profile() as p:
            _linear_against_torch(x, w, b, projection, second_order, tanh_first=elementwise)
        padded = [launch.name for launch in p.launches if launch.name.startswith("e_10_11_")]
        assert bool(padded) == elementwise, [launch.name for launch in p.launches]


def test_linear_through_panels_gives_torch_values_and_gradients_second_order_included(monkeypatch):
    # panels of 4 columns forced on small shapes: the forward's weight (8, 12) and the input gradient's (12, 8)
    seen = []

    def panels(device, columns, itemsize):
        seen.append(columns)
        return 4

    monkeypatch.setattr(layout, "linear_weight_transposed", lambda device, rows, plain: True)
    monkeypatch.setattr(layout, "product_panel_width", panels)
    rng = np.random.default_rng(4)
    x, w, b, projection = (rng.standard_normal(s).astype(np.float32) for s in ((2, 5, 8), (12, 8), (12,), (2, 5, 12)))
    _linear_against_torch(x, w, b, projection, second_order=True)
    assert seen[:2] == [12, 8], seen  # the forward's panels of the weight's transpose, then the input gradient's


def test_a_wide_linear_layer_runs_its_products_through_panels(backend):
    # 1024 rows, 512 -> 512: the forward and the input gradient each read a (512, 512) operand in panels of 64
    # columns where the device's vectors have 16 lanes, and the same values either way
    rng = np.random.default_rng(5)
    shapes = ((1024, 512), (512, 512), (512,), (1024, 512))
    x, w, b, projection = ((rng.standard_normal(s) / np.sqrt(s[-1])).astype(np.float32) for s in shapes)
    with lazygrad.profile() as p:
        _linear_against_torch(x, w, b, projection, second_order=False)
    products = [launch.name for launch in p.launches if launch.name.startswith("r_1024_")]
    if layout.product_panel_width(lazygrad.Device.DEFAULT, 512, 4):
        assert sum(name.startswith("r_1024_8_64_512_") for name in products) == 2, products
    else:
        assert not any(name.startswith("r_1024_8_64_") for name in products), products
