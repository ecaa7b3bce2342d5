"""FusedDecoder.step without keys=: the attention keys are computed once per memory tensor and reused while
the same tensor comes back unmodified under the same weights; results equal precomputed keys exactly. General
attention does so over at most 64 source rows (B·S); over more it projects the query each step and scores it
against memory itself (no keys GEMM; the projected-query form is built once per memory and cached too)."""
import copy
import importlib
import io

import pytest
import torch

import fused_s2s.nn.decoder as decoder_module
from fused_s2s import FusedDecoder
from tests.utils import assert_close

# The module, not the function fused_s2s.ops re-exports under the same name.
decoder_step_ops = importlib.import_module("fused_s2s.ops.decoder_step")

E, H, S, B = 6, 8, 5, 3


@pytest.fixture
def counted(monkeypatch):
    """Counts keys computations, the decoder's own and those the step op makes when it is given none."""
    calls = []
    real = decoder_module.attention_keys

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(decoder_module, "attention_keys", counting)
    monkeypatch.setattr(decoder_step_ops, "attention_keys", counting)
    return calls


def decode(dec, xs, memory, lengths, keys=None, state=None):
    outs = []
    with torch.no_grad():
        for x in xs:
            out, state, attn = dec.step(x, state, memory, lengths, keys=keys)
            outs.append((out, attn))
    return outs, state


@pytest.mark.parametrize("kind", ["dot", "additive", "scaled_dot", "general"])  # general: B·S = 15 rows
def test_without_keys_equals_precomputed_and_computes_once(kind, counted):
    dec = FusedDecoder(E, H, H, num_layers=2, attention=kind).eval()
    xs, memory = torch.randn(4, B, E), torch.randn(B, S, H)
    lengths = torch.tensor([S, 2, 4])
    with torch.no_grad():
        keys = dec.precompute_keys(memory)
    counted.clear()
    ours, s_ours = decode(dec, xs, memory, lengths)
    assert len(counted) == 1, "keys computed once for four steps over one memory"
    theirs, s_theirs = decode(dec, xs, memory, lengths, keys=keys)
    for (o, a), (ro, ra) in zip(ours, theirs):
        assert torch.equal(o, ro) and torch.equal(a, ra)
    assert torch.equal(s_ours.h, s_theirs.h) and torch.equal(s_ours.c, s_theirs.c)


def test_general_without_keys_projects_the_query(counted):
    """Over more than 64 source rows (B·S = 3·30): the projected-query form (memory itself, no GEMM over the
    source) is asked for once and cached; the results equal the precomputed keys' to fp32 rounding (another
    summation order)."""
    dec = FusedDecoder(E, H, H, num_layers=2, attention="general").eval()
    S_long = 30
    xs, memory = torch.randn(4, B, E), torch.randn(B, S_long, H)
    lengths = torch.tensor([S_long, 2, 4])
    with torch.no_grad():
        keys = dec.precompute_keys(memory)
    counted.clear()
    ours, s_ours = decode(dec, xs, memory, lengths)
    cached = dec._keys_cache.entry
    assert len(counted) == 1 and cached is not None and cached[3].project_query and cached[3].keys is memory
    theirs, s_theirs = decode(dec, xs, memory, lengths, keys=keys)
    for (o, a), (ro, ra) in zip(ours, theirs):
        assert_close(o, ro, "out")
        assert_close(a, ra, "attn")
    assert_close(s_ours.h, s_theirs.h, "h")


def test_keys_follow_the_memory_and_the_weights(counted):
    dec = FusedDecoder(E, H, H, attention="additive").eval()
    xs, memory = torch.randn(2, B, E), torch.randn(B, S, H)

    def step_and_expected(mem):
        """dec.step without keys (counted as it computes) and with freshly computed keys (not counted)."""
        got, _ = decode(dec, xs[:1], mem, None)
        n = len(counted)
        expected, _ = decode(dec, xs[:1], mem, None, keys=dec.precompute_keys(mem))
        del counted[n:]
        assert_close(got[0][0], expected[0][0], "step without keys vs fresh keys")

    decode(dec, xs, memory, None)
    assert len(counted) == 1
    step_and_expected(memory)
    assert len(counted) == 1  # same tensor, unmodified: reused
    with torch.no_grad():
        memory.mul_(2.0)  # modified in place: its version changes
    step_and_expected(memory)
    assert len(counted) == 2
    step_and_expected(memory.clone())  # another tensor
    assert len(counted) == 3
    step_and_expected(memory)  # back to the first tensor: the cache holds one memory
    assert len(counted) == 4
    with torch.no_grad():
        dec.attn.w_memory.add_(0.1)  # the weights change (an optimizer step)
    step_and_expected(memory)
    assert len(counted) == 5


def test_decoder_with_cached_keys_copies_and_saves():
    dec = FusedDecoder(E, H, H, attention="additive").eval()
    xs, memory = torch.randn(2, B, E), torch.randn(B, S, H)
    ours, _ = decode(dec, xs, memory, None)
    twin = copy.deepcopy(dec)
    buf = io.BytesIO()
    torch.save(dec, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for other in (twin, loaded):
        theirs, _ = decode(other, xs, memory, None)
        assert torch.equal(ours[-1][0], theirs[-1][0])


def test_inference_mode_tensors_are_not_cached(counted):
    """An inference tensor has no version counter, so the keys are computed every step (never stale)."""
    dec = FusedDecoder(E, H, H, attention="additive").eval()
    xs = torch.randn(3, B, E)
    with torch.inference_mode():
        memory = torch.randn(B, S, H)
        keys = dec.precompute_keys(memory)
        counted.clear()
        state, outs = None, []
        for x in xs:
            out, state, _ = dec.step(x, state, memory)
            outs.append(out)
        assert len(counted) == 3
        memory.mul_(2.0)
        out, _, _ = dec.step(xs[0], None, memory)
        expected, _, _ = dec.step(xs[0], None, memory, keys=dec.precompute_keys(memory))
    assert torch.equal(out, expected)
    assert not torch.equal(outs[0], out)
