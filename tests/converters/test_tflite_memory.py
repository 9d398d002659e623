"""Running a GQ .tflite model costs about its packed size in RSS, not its float size."""

import converters
from converters import layout, memory


def test_peak_rss_grows_by_the_packed_size(tmp_path):
    width, layers, bits = 2048, 2, 4  # 32 MiB of float weights, 4 MiB packed
    large = converters.export_tflite(memory.large_qat_model(width, layers, bits), str(tmp_path / "l.tflite"))
    tiny = converters.export_tflite(memory.large_qat_model(64, layers, bits), str(tmp_path / "t.tflite"))
    packed = layers * layout.packed_size(bits, width, width)
    net = memory.peak_rss_growth(large.path)["growth"] - memory.peak_rss_growth(tiny.path)["growth"]
    # RSS moves in 2 MiB steps here (transparent huge pages), so allow one
    # step over the packed bytes; a decoded float copy would add 32 MiB and
    # an int8 copy 8 MiB.
    assert net <= packed + 2 * 2**20 + 2**19, (net, packed)
    assert net >= packed * 0.9, (net, packed)  # the weights are really read
