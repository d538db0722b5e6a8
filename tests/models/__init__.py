"""Tiny models, one module per family, all with the same protocol:

    FAMILY      family name (families/)
    AXES        tiny optimization profile: axis -> (min, opt, max)
    POINT       axis sizes of the sampling-loop tests (inside AXES)
    make_model()                      seeded, eval-mode diffusers model, fp32
    timestep(step, num_steps, batch)  the ``timestep`` input a pipeline would pass at ``step``
    reference_hooks(model)            where tests/reference.py hooks the original model
    VARIANT                           (optional) the coefficient set to export (default: the
                                      family's choice from the config)
    FORCED_FIRST, FORCED_LAST         (optional) upstream's forced steps, for the reference
                                      (default 1, True: the first and the last step)
    FORCED_FRACTION, ACCUMULATE, EPS  (optional) the rule's other knobs, for the reference
                                      (default 0.0, "raw", 0.0; see tests/reference.py)
    LONG_STEPS                        (optional) step counts of further parity loops against
                                      the reference (e.g. (30,)), beyond the 10-step ones
    TIMESTEP_KWARG                    (optional) the forward keyword the sampling loop moves
                                      (default "timestep"; HiDream's model takes "timesteps")
    update(latents, output, steps)    (optional) the sampling loop's latent update, where the
                                      output is not shaped like the latents (learned sigma);
                                      default ``latents - output / steps``
    REAL_CONFIG                       keyword arguments of the diffusers model class with a real
                                      checkpoint's dimensions (hidden size, heads, channels, text
                                      width, patch sizes, positional settings) but 1-2 layers of
                                      each kind (a few hundred M parameters): a default export
                                      of it meets the real profiles, weights and activations
                                      (tests/export/test_real_size.py, scripts/real_size_export.py)
    REAL_CONFIG_<SUFFIX>              (optional) further layouts of the family worth exporting
                                      at real size, e.g. REAL_CONFIG_15 for CogVideoX1.5-5B

and, for a family whose diffusers pipeline runs from tiny components (no download; prompts
passed as embeddings, so no tokenizer or text encoder):

    make_pipeline(transformer)        the family's diffusers pipeline around ``transformer``
    run_pipeline(pipe, steps, seed)   one generation of ``steps`` steps; returns its output
                                      tensor (frames, images or latents, as the module chooses)
    PIPELINE_CONTEXTS                 the cache contexts one generation uses, as the pipeline's
                                      own code makes them: names it passes to cache_context
                                      ("cond_uncond"), "default" for unnamed calls, "default#1"
                                      for a second unnamed call within a step
    PIPELINE_THRESHOLD                a threshold at which the tiny pipeline skips some steps

Every module here is a family: the generic tests (tests/runtime/, tests/engines/) run over
FAMILIES, found by listing this package, so a new family adds its module and edits no list.
"""
import pkgutil

FAMILIES = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
