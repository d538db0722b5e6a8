"""Tiny models, one module per family, all with the same protocol:

    FAMILY      family name (export/families/)
    AXES        tiny optimization profile: axis -> (min, opt, max)
    POINT       axis sizes of the sampling-loop tests (inside AXES)
    make_model()                      seeded, eval-mode diffusers model, fp32
    timestep(step, num_steps, batch)  the ``timestep`` input a pipeline would pass at ``step``

The generic tests (tests/runtime/, tests/engines/) run over every module listed in FAMILIES.
"""
FAMILIES = ["flux", "hunyuan_video", "cogvideox"]
