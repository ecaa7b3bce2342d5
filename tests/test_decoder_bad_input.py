"""FusedDecoder / Seq2Seq bad input: clear errors that say what was expected and what was given."""
import pytest
import torch

from fused_s2s import FusedDecoder, Seq2Seq
from fused_s2s.nn.decoder import DecoderState

E, H, M, S = 5, 6, 7, 4


@pytest.fixture
def dec():
    return FusedDecoder(E, H, M, num_layers=2)


def inputs(B=3, T=2):
    return torch.randn(B, T, E), torch.randn(B, S, M)


def test_unknown_attention_name():
    with pytest.raises(ValueError, match=r"unknown attention 'luong'.*general"):
        FusedDecoder(E, H, M, attention="luong")


def test_dot_attention_needs_equal_sizes():
    with pytest.raises(ValueError, match="memory_size == hidden_size.*7.*6"):
        FusedDecoder(E, H, M, attention="dot")


def test_unknown_bridge_and_linear_bridge_needs_encoder_size():
    with pytest.raises(ValueError, match="unknown bridge"):
        FusedDecoder(E, H, M, bridge="mlp")
    with pytest.raises(ValueError, match="encoder_hidden_size"):
        FusedDecoder(E, H, M, bridge="linear")


@pytest.mark.parametrize("bad", [torch.tensor([4, 0, 2]), torch.tensor([5, 1, 2]), torch.tensor([-1, 2, 2])])
def test_memory_lengths_out_of_range(dec, bad):
    x, memory = inputs()
    with pytest.raises(ValueError, match=r"memory_lengths must be in \[1, 4\]"):
        dec(x, memory, bad)
    with pytest.raises(ValueError, match=r"memory_lengths must be in \[1, 4\]"):
        dec.step(x[:, 0], dec.zero_state(3, x), memory, bad)


def test_memory_lengths_checked_again_after_in_place_change_or_for_other_memory(dec):
    """step() checks a lengths tensor once, then again only when it changed or the memory length did."""
    x, memory = inputs()
    lengths = torch.tensor([4, 1, 2])
    with torch.no_grad():
        dec.step(x[:, 0], dec.zero_state(3, x), memory, lengths)
        dec.step(x[:, 1], dec.zero_state(3, x), memory, lengths)
        lengths[1] = 0
        with pytest.raises(ValueError, match=r"memory_lengths must be in \[1, 4\]"):
            dec.step(x[:, 0], dec.zero_state(3, x), memory, lengths)
        lengths[1] = 4
        dec.step(x[:, 0], dec.zero_state(3, x), memory, lengths)
        with pytest.raises(ValueError, match=r"memory_lengths must be in \[1, 3\]"):
            dec.step(x[:, 0], dec.zero_state(3, x), memory[:, :3], lengths)


def test_memory_lengths_wrong_device(dec):
    x, memory = inputs()
    with pytest.raises(RuntimeError, match="memory_lengths must be on cpu like memory, got meta"):
        dec(x, memory, torch.tensor([1, 2, 3], device="meta"))


def test_memory_lengths_wrong_shape_or_dtype(dec):
    x, memory = inputs()
    with pytest.raises(ValueError, match=r"Expected shape \(3,\), got \(2,\)"):
        dec(x, memory, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="must be integers"):
        dec(x, memory, torch.tensor([1.0, 2.0, 3.0]))


def test_batch_sizes_disagree(dec):
    x, _ = inputs(B=3)
    with pytest.raises(ValueError, match="memory batch size must match the input's. Expected 3, got 2"):
        dec(x, torch.randn(2, S, M))
    with pytest.raises(RuntimeError, match=r"Expected state.h size \(2, 3, 6\), got \[2, 4, 6\]"):
        dec(x, torch.randn(3, S, M), state=dec.zero_state(4, x))
    st = dec.zero_state(3, x)
    with pytest.raises(RuntimeError, match=r"Expected state.feed size \(3, 6\), got \[2, 6\]"):
        dec(x, torch.randn(3, S, M), state=DecoderState(st.h, st.c, torch.zeros(2, H)))


def test_wrong_feature_sizes(dec):
    x, memory = inputs()
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. Expected 5, got 4"):
        dec(torch.randn(3, 2, 4), memory)
    with pytest.raises(RuntimeError, match="memory.size\\(-1\\) must be equal to memory_size. Expected 7, got 6"):
        dec(x, torch.randn(3, S, 6))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. Expected 5, got 3"):
        dec.step(torch.randn(3, 3), dec.zero_state(3, x), memory)
    with pytest.raises(RuntimeError, match=r"Expected state.c size \(2, 3, 6\), got \[2, 3, 5\]"):
        st = dec.zero_state(3, x)
        dec(x, memory, state=DecoderState(st.h, torch.zeros(2, 3, 5), st.feed))


def test_wrong_ranks(dec):
    x, memory = inputs()
    with pytest.raises(ValueError, match="expected input \\[B, T, E\\] to be 3D, got 2D"):
        dec(x[:, 0], memory)
    with pytest.raises(ValueError, match="expected memory \\[B, S, M\\] to be 3D, got 2D"):
        dec(x, memory[:, 0])
    with pytest.raises(ValueError, match="expected input \\[B, E\\] to be 2D, got 3D"):
        dec.step(x, dec.zero_state(3, x), memory)


def test_init_state_mismatches():
    dec = FusedDecoder(E, H, M, num_layers=2)
    h = torch.randn(4, 3, 2)  # 2 layers x 2 directions x hidden 2 -> concat gives 4 != 6
    with pytest.raises(ValueError, match="Expected 6, got 2 \\* 2 = 4"):
        dec.init_state((h, h))
    with pytest.raises(ValueError, match="not a multiple of the decoder's num_layers 2"):
        dec.init_state((torch.randn(3, 3, 3), torch.randn(3, 3, 3)))
    with pytest.raises(ValueError, match="needs a decoder built with bridge='linear'"):
        dec.init_state((torch.randn(4, 3, 3), torch.randn(4, 3, 3)), bridge="linear")
    lin = FusedDecoder(E, H, M, num_layers=2, bridge="linear", encoder_hidden_size=5)
    with pytest.raises(ValueError, match="Expected 10, got 6"):
        lin.init_state((torch.randn(4, 3, 3), torch.randn(4, 3, 3)))


def test_seq2seq_bad_input():
    model = Seq2Seq(9, 9, 4, 6)
    with pytest.raises(ValueError, match="hidden_size must be even"):
        Seq2Seq(9, 9, 4, 7)
    src = torch.randint(3, 9, (2, 5))
    with pytest.raises(ValueError, match=r"tgt \[B, T\] with B = 2, got \(3, 4\)"):
        model(src, torch.tensor([5, 3]), torch.randint(3, 9, (3, 4)))
