"""benchmarks/forward_mode_memory.py's instrument: live tensor bytes of a forward-mode pass, counted on the CPU."""
import torch

from benchmarks.forward_mode_memory import LiveBytes, forward_mode_peak

MIB = 2**20


def test_live_bytes_counts_what_is_alive_together_and_not_what_existed():
    weight = torch.ones(MIB // 4)  # 1 MiB that exists before: returned as is below, never counted
    with LiveBytes([weight]) as counter:
        a = torch.zeros(MIB // 4) + 1  # 1 MiB (the zeros' storage is freed once the sum exists)
        b = torch.zeros(2 * MIB // 4) + 2  # +2 MiB while a lives
        del a, b
        c = torch.zeros(MIB // 4) + weight.view(-1)  # 1 MiB
        same = weight.to(torch.float32)  # the existing storage again
    assert same.data_ptr() == weight.data_ptr()
    assert counter.peak == 5 * MIB, counter.peak / MIB  # a, then b's zeros and b: 1 + 2 + 2
    assert counter.live == MIB  # c alone (its zeros are gone; `same` is the weight)
    del c


def test_forward_mode_peak_counts_values_and_tangents_but_not_the_weights():
    layer = torch.nn.Linear(256, 512, bias=False).requires_grad_(False)  # 512 KiB of weights, not counted
    peak, seconds = forward_mode_peak(layer, torch.randn(64, 256), layer)
    out_bytes = 64 * 512 * 4
    assert 2 * out_bytes <= peak <= 3 * out_bytes  # the output's value and tangent
    assert seconds >= 0
