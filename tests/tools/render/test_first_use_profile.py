"""teacache-render's first-use profile from the job file's sizes: the family maps pixel sizes
to its axes, the default range widens to cover the jobs, the optimum is the commonest job, and
sizes beyond the config's limit are left out with a note (no export here: pure profile code)."""
import json

from teacache_trt.families import get_family
from teacache_trt.tools.render.artifacts import job_sizes, sized_axes

WAN = get_family("wan")
# The new user: a WanTransformer3DModel config whose RoPE table holds 64 positions
# (patch 2: at most 128 latents high or wide, 64 latent frames).
CONFIG = dict(patch_size=[1, 2, 2], num_attention_heads=12, attention_head_dim=128, in_channels=16,
              out_channels=16, rope_max_seq_len=64)


class Driver:
    def size_defaults(self, model_dir):
        return {"height": 480, "width": 832, "frames": 81}  # WanPipeline's


def test_wan_maps_pixels_to_latents_by_its_vae():
    assert WAN.job_axes(CONFIG, {"height": 480, "width": 832, "frames": 81}) == {"height": 60, "width": 104,
                                                                                "frames": 21}
    ti2v = dict(CONFIG, in_channels=48, out_channels=48)  # Wan2.2 TI2V-5B: its VAE compresses 16x
    assert WAN.job_axes(ti2v, {"height": 704, "width": 1280, "frames": 121}) == {"height": 44, "width": 80,
                                                                                "frames": 31}
    assert WAN.job_axes(CONFIG, {"width": 64}) == {"width": 8}  # only what the job gives
    assert get_family("flux").job_axes({}, {"height": 512}) == {}  # a family that does not say: defaults stay


def test_profile_covers_the_jobs_within_the_config_limit(tmp_path):
    lines = [{"id": "a", "height": 720, "width": 1024, "frames": 81}, {"id": "b", "height": 720, "width": 1024},
             {"id": "c"}, {"id": "d", "width": 1280, "frames": "many"}, {"id": "e", "height": True}]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\nnot json\n")
    sizes = job_sizes(jobs, Driver(), tmp_path)
    # a missing, non-integer or boolean size is the pipeline's default; a bad line counts as one
    assert sizes == [{"height": 720, "width": 1024, "frames": 81}, {"height": 720, "width": 1024, "frames": 81},
                     {"height": 480, "width": 832, "frames": 81}, {"height": 480, "width": 1280, "frames": 81},
                     {"height": 480, "width": 832, "frames": 81}, {"height": 480, "width": 832, "frames": 81}]
    notes = []
    ranges = sized_axes(WAN, CONFIG, sizes, notes.append)
    # defaults (clamped to the limit): height 2:60:128, width 2:104:128, frames 1:21:21
    assert ranges == {"height": (2, 60, 128), "width": (2, 104, 128), "frames": (1, 21, 21)}
    assert len(notes) == 1 and "width [160]" in notes[0] and "rope_max_seq_len=64" in notes[0]
    # beyond the default but within the limit: the range widens to the job
    long = sized_axes(WAN, dict(CONFIG, rope_max_seq_len=1024), [{"height": 480, "width": 832, "frames": 161}] * 2
                      + [{"height": 1920, "width": 832, "frames": 81}], notes.append)
    assert long == {"height": (2, 60, 240), "width": (2, 104, 160), "frames": (1, 41, 41)}
    assert len(notes) == 1


def test_drivers_without_sizes_keep_the_plan(tmp_path):
    (tmp_path / "jobs.jsonl").write_text('{"id": "a", "height": 64}\n')
    assert job_sizes(tmp_path / "jobs.jsonl", object(), tmp_path) == []
    assert sized_axes(WAN, CONFIG, [], print) == {}
