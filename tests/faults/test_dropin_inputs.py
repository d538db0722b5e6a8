"""The drop-in transformer called with what is not a dense tensor with values (a string, a meta
tensor, a sparse tensor) or with an empty batch: a TeaCacheError naming the input and the fix,
before any graph runs, never a TypeError / NotImplementedError / RuntimeError from deep inside."""
from __future__ import annotations

import pytest
import torch

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.families import get_family


@pytest.fixture
def flux(exported):
    return exported("flux")


@pytest.fixture
def call(flux):
    """call(**changes) -> the transformer called with the tiny FLUX inputs, some replaced;
    graph launches are counted in call.runs."""
    fam = get_family("flux")
    t = teacache_trt.load_transformer(flux.art_dir)
    runs = []
    for name, runner in t.runners.items():
        original = runner.infer_into
        runner.infer_into = lambda feed, out, _n=name, _o=original: (runs.append(_n), _o(feed, out))[1]

    def run(empty_batch=False, **changes):
        t.reset(4)
        kwargs = fam.kwargs_from_feed(fam.example_inputs(dict(flux.model.config), dict(flux.spec.POINT), torch.float32))
        if empty_batch:  # every input with a batch dimension cut to none of it
            rows = flux.spec.POINT["batch"]
            kwargs = {k: v[:0] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == rows else v
                      for k, v in kwargs.items()}
        kwargs.update({k: v(kwargs[k]) if callable(v) else v for k, v in changes.items()})
        return t(**kwargs)

    run.runs = runs
    return run


@pytest.mark.parametrize("changes, message", [
    ({"hidden_states": "abc"}, r"input 'hidden_states' is a str \('abc'\), not a tensor: pass a torch.Tensor"),
    ({"timestep": "0.5"}, r"input 'timestep' is a str \('0.5'\), not a tensor"),
    ({"hidden_states": object()}, r"input 'hidden_states' is a object .*not a tensor"),
    ({"hidden_states": lambda t: torch.empty(t.shape, device="meta")},
     r"input 'hidden_states' is on the meta device, which holds no values"),
    ({"hidden_states": lambda t: t.to_sparse()}, r"input 'hidden_states' is a torch.sparse_coo tensor: .*to_dense\(\)"),
])
def test_what_is_not_a_dense_tensor_is_refused_by_name(call, changes, message):
    with pytest.raises(TeaCacheError, match=message):
        call(**changes)
    assert call.runs == []


def test_an_empty_batch_names_the_cause_not_an_impossible_range(call):
    with pytest.raises(TeaCacheError, match=r"batch=0: the inputs are empty along batch .*give at least one") as info:
        call(empty_batch=True)
    assert "--axis batch=0" not in str(info.value)  # teacache-export refuses that range
    assert call.runs == []


def test_lists_of_numbers_still_become_tensors(call):
    out = call(timestep=[0.5, 0.5])  # numbers where a tensor goes: converted, as before
    assert torch.isfinite(out.sample if hasattr(out, "sample") else out[0]).all()
