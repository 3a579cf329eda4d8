"""Every RoPE family the generator writes (models/gguf_gen.py FAMILIES and ISWA_FAMILIES) keeps every
view exact: NEOX-style RoPE, Q/K/V biases, QK-norm, llama-3 frequency factors, YaRN scaling, Phi-3's
fused projections and long/short factors, partial rotary dimensions (StableLM), and Gemma 2/3's
interleaved sliding-window attention (iSWA: two caches, the window applied in each view's positions,
per-layer RoPE bases and scaling, soft-capping). The same properties as tests/test_cache.py, per family."""

import pytest

from hogwild_cpp.layouts import LAYOUTS
from hogwild_cpp.native import Model
from models import gguf_gen
from test_cache import CACHE_TYPES, NGL, SPLIT, check_shared_prefix_at_offsets, check_views_match_fresh_decodes

FAMILIES = gguf_gen.FAMILIES + gguf_gen.ISWA_FAMILIES

# a window shorter than the views of the tests, so that cells leave and re-enter windows; and enough
# layers in the deep models for a global layer between sliding ones (Gemma 3: every sixth is global)
SLIDING_WINDOW = 8
DEEP_LAYERS = {"gemma3": 7}


def family_model(path, family, n_layer, weight_std):
    return Model(gguf_gen.write_family_gguf(path, family, n_layer=n_layer, seed=5, weight_std=weight_std,
                                            sliding_window=SLIDING_WINDOW), n_gpu_layers=NGL,
                 split_mode=SPLIT)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Per family: a sharp one-layer model, a soft one (for flash attention), a three-layer one."""
    d = tmp_path_factory.mktemp("families")
    out = {}
    for f in FAMILIES:
        out[f] = {"sharp": family_model(d / f"{f}-sharp.gguf", f, 1, 0.3),
                  "soft": family_model(d / f"{f}-soft.gguf", f, 1, 0.05),
                  "deep": family_model(d / f"{f}-deep.gguf", f, DEEP_LAYERS.get(f, 3), 0.3)}
    yield out
    for m in out.values():
        for model in m.values():
            model.close()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("n_workers", [1, 2, 4, 8])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_view_equals_a_fresh_decode_in_every_family(models, family, n_workers, layout):
    check_views_match_fresh_decodes(models[family]["sharp"], n_workers, layout, "f32", seed=n_workers)


@pytest.mark.parametrize("n_workers", [2, 8])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_view_equals_a_fresh_decode_in_every_family_with_flash_attention(models, family, n_workers):
    check_views_match_fresh_decodes(models[family]["soft"], n_workers, "combined", "f16", seed=n_workers, flash="on")


@pytest.mark.parametrize("family", FAMILIES)
def test_random_interleavings_with_many_commits_in_every_family(models, family):
    check_views_match_fresh_decodes(models[family]["sharp"], 4, "combined", "f32", seed=31, n_steps=25)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_at_any_offset_equals_fresh_decode_in_deep_models_of_every_family(models, family):
    """Views folded and shifted (K rotated in the cache): RoPE type, factors and YaRN must all agree."""
    check_shared_prefix_at_offsets(models[family]["deep"], 4, "f32", "f32", CACHE_TYPES["f32"][2])
