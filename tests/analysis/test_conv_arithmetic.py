"""Convolution arithmetic: the course's numbers, receptive fields, per-layer tables."""

import pytest

from cnnrnn import analysis, models


@pytest.mark.parametrize("padding,stride,want", [(0, 1, 28), (2, 1, 32), (0, 2, 14), (2, 2, 16)])
def test_course_output_sizes(padding, stride, want):
  # A 32x32 input and a 5x5 kernel.
  assert analysis.conv_output_size(32, 5, padding=padding, stride=stride) == want


def test_output_size_with_dilation_and_pooling():
  assert analysis.conv_output_size(32, 3, padding=2, dilation=2) == 32
  assert analysis.conv_output_size(224, 7, padding=3, stride=2) == 112  # ResNet stem
  assert analysis.conv_output_size(55, 3, stride=2) == 27  # AlexNet's overlapping pool


def test_output_size_errors():
  with pytest.raises(ValueError, match="exceeds the padded input"):
    analysis.conv_output_size(4, 7)
  with pytest.raises(ValueError, match="stride"):
    analysis.conv_output_size(32, 5, stride=0)


def test_receptive_field_of_stacked_5x5_convs():
  assert analysis.receptive_fields([(5, 1)] * 3) == [5, 9, 13]
  assert analysis.receptive_field([(5, 1)] * 3) == 13
  assert analysis.receptive_field([]) == 1


def test_receptive_field_with_strides_and_dilation():
  # conv 3x3/1, pool 2x2/2, conv 3x3/1: 3, 4, 8.
  assert analysis.receptive_fields([(3, 1), (2, 2), (3, 1)]) == [3, 4, 8]
  assert analysis.receptive_field([(3, 1, 2)]) == 5
  with pytest.raises(ValueError, match="layers\\[1\\]"):
    analysis.receptive_field([(3, 1), (3,)])


def test_dense_versus_conv_parameters():
  # A 224x224x3 image into 1000 dense units, vs one layer of 1000 5x5 filters.
  dense = models.create("conv_stack", features=(), dense=(), num_classes=1000)
  rows = analysis.layer_table(dense, (1, 224, 224, 3))
  assert rows[-1].params == 224 * 224 * 3 * 1000 + 1000 == 150_529_000
  conv = models.create("conv_stack", features=(1000,), kernel_size=5, dense=(), num_classes=1,
                       pool_every=0, global_pool=True)
  rows = analysis.layer_table(conv, (1, 224, 224, 3))
  assert rows[0].params == 5 * 5 * 3 * 1000 + 1000 == 76_000


def test_layer_table_of_lenet():
  rows = analysis.layer_table(models.create("lenet5"), (1, 32, 32, 1))
  by_name = {r.name: r for r in rows}
  assert by_name["conv1"].output_shape == (1, 28, 28, 6)
  assert by_name["conv1"].receptive_field == (5, 5)
  assert by_name["conv2"].receptive_field == (14, 14)  # through the inferred 2x2 pool
  assert by_name["head"].output_shape == (1, 10) and by_name["head"].receptive_field is None
  assert sum(r.params for r in rows) == 61_706


def test_layer_table_of_alexnet_and_resnet50():
  rows = analysis.layer_table(models.create("alexnet"), (1, 224, 224, 3))
  by_name = {r.name: r for r in rows}
  assert by_name["pool3"].output_shape == (1, 6, 6, 256)
  assert by_name["pool3"].receptive_field == (195, 195)
  assert sum(r.params for r in rows) == 61_100_840
  rows = analysis.layer_table(models.create("resnet50"), (1, 224, 224, 3))
  assert rows[-2].name == "stage4_block2/bn3"
  assert rows[-2].receptive_field == (427, 427)
  assert sum(r.params for r in rows) == 25_557_032
  text = analysis.format_layer_table(rows)
  assert "stage1_block0/downsample/conv" in text and "25,557,032" in text
