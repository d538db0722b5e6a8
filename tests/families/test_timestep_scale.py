"""Family data the tools' sampling loops use: the timestep each model reads."""
import pytest

from teacache_trt import TeaCacheError
from teacache_trt.families import TimestepScale, get_family


def test_flux_takes_sigma():
    scale = get_family("flux").timestep_scale
    assert scale.timesteps(4) == [1.0, 0.75, 0.5, 0.25]
    assert sum(scale.step_sizes(4)) == pytest.approx(-1.0)  # sigma 1 -> 0


def test_hunyuan_video_takes_sigma_times_1000():
    scale = get_family("hunyuan_video").timestep_scale
    assert scale.timesteps(4) == [1000.0, 750.0, 500.0, 250.0]
    assert sum(scale.step_sizes(4)) == pytest.approx(-1.0)  # the update still moves by sigma


def test_cogvideox_takes_integer_ddpm_timesteps():
    scale = get_family("cogvideox").timestep_scale
    ints = scale.timesteps(4)
    assert scale.integer and ints[0] == 999 and ints[-1] == 0 and ints == sorted(ints, reverse=True)
    assert all(isinstance(t, int) for t in ints)


def test_mochi_and_lumina_take_one_minus_sigma():
    # 0 is pure noise for these models; their pipelines move the latents by +|dt| * output.
    for family, scale in (("mochi", 1000.0), ("lumina_next", 1.0), ("lumina2", 1.0)):
        ts = get_family(family).timestep_scale
        assert ts.timesteps(4) == [0.0, 0.25 * scale, 0.5 * scale, 0.75 * scale]
        assert sum(ts.step_sizes(4)) == pytest.approx(1.0)


def test_unknown_kind_is_refused():
    with pytest.raises(TeaCacheError, match="'sde'"):
        TimestepScale("sde")


def test_rflow_reads_1000_sigma_and_moves_toward_data():
    # Open-Sora's RFLOW: the model reads 1000 * sigma (1000 = noise) and z += v * dt with dt > 0.
    rflow = TimestepScale("flow", 1000.0, toward_data=True)
    assert rflow.timesteps(4) == [1000.0, 750.0, 500.0, 250.0]
    assert rflow.step_sizes(4) == [0.25] * 4
    assert get_family("hunyuan_video").timestep_scale.step_sizes(4) == [-0.25] * 4  # same timesteps, other sign
    assert TimestepScale("flow", 1000.0, reverse=True, toward_data=False).step_sizes(2) == [-0.5, -0.5]


@pytest.mark.parametrize("kwargs, message", [({"scale": 0}, "scale 0 must be"), ({"toward_data": "yes"}, "True or False")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(TeaCacheError, match=message):
        TimestepScale("flow", **kwargs)
