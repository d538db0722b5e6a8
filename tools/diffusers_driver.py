"""The render driver for diffusers pipeline folders (``model_index.json``): ``teacache-render
--model PATH`` for FLUX, HunyuanVideo, CogVideoX ... through the pipeline's own ``__call__``,
with the compiled transformer in place of the PyTorch one.

Text: a job gives ``prompt`` (encoded by the pipeline's own text encoders, when the folder has
them) or ``prompt_embeds``, a safetensors file (relative to the job file) whose tensors are
keyword arguments of the pipeline, one prompt each (leading dimension 1): ``prompt_embeds`` and,
for FLUX, ``pooled_prompt_embeds`` (plus ``negative_*`` ones for true CFG).  That is how jobs
encoded elsewhere are rendered, and how this project renders without downloading tokenizers.
The job fields ``height``, ``width``, ``frames`` (``num_frames``) and ``negative_prompt`` exist
where the pipeline takes them; video pipelines take ``fps`` too (the MP4's frame rate; where the
pipeline itself takes a ``frame_rate``, as LTX-Video does, it is passed on), by default the
pipeline's (:func:`default_fps`).  A job whose latents become NaN or infinite during sampling
fails with that cause (watched through the pipeline's ``callback_on_step_end``).
"""
from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path

import torch

from ..errors import TeaCacheError, shown
from .drivers import ExportPlan
from .render.encode import Failed, Video, check_fps

MODEL_INDEX = "model_index.json"
EMBEDS_FIELD = "prompt_embeds"
# job field -> the pipeline keyword it sets, with its type
OPTIONAL_FIELDS = {"height": ("height", int), "width": ("width", int), "frames": ("num_frames", int),
                   "negative_prompt": ("negative_prompt", str)}
DEFAULT_BATCH = (1, 8, 16)  # rows per call: min 1 for one prompt's sub-batch, opt the default --batch-size
# Frames per second of each video pipeline's model (what its model card exports at), by the
# class name's start; a pipeline with a frame_rate argument says its own.  Others: VIDEO_FPS.
PIPELINE_FPS = {"CogVideoX": 8.0, "ConsisID": 8.0, "HunyuanVideo": 15.0, "Wan": 16.0, "LTX": 24.0,
                "Mochi": 30.0, "Latte": 8.0, "Allegro": 15.0}
VIDEO_FPS = 8.0
FRAME_RATE_KEYWORDS = ("frame_rate", "fps")  # a pipeline argument that conditions on the frame rate


def _dtype_keyword() -> str:
    """diffusers 0.42 renamed from_pretrained's ``torch_dtype`` to ``dtype`` (the old name warns)."""
    import diffusers

    major, minor = (int(x) for x in diffusers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (0, 42) else "torch_dtype"



def model_index(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / MODEL_INDEX).read_text())


@functools.lru_cache(maxsize=None)
def _call_parameters(class_name: str) -> dict[str, inspect.Parameter]:
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "__call__"):
        raise TeaCacheError(f"{MODEL_INDEX} names the pipeline {class_name!r}, which diffusers "
                            f"{diffusers.__version__} does not have: upgrade diffusers or fix the folder")
    return dict(inspect.signature(cls.__call__).parameters)


def pipeline_class_name(model_dir: Path) -> str:
    name = model_index(model_dir).get("_class_name")
    if not isinstance(name, str):
        raise TeaCacheError(f"{Path(model_dir) / MODEL_INDEX} has no _class_name: save the pipeline with diffusers")
    return name


def has_component(model_dir: Path, name: str) -> bool:
    """A component listed with a class (``[null, null]`` means the folder has none)."""
    entry = model_index(model_dir).get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None


def embeds_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, read from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in sorted(f.keys())}
    except Exception as exc:
        raise TeaCacheError(f"prompt_embeds {path} is not a readable safetensors file ({exc}): write it with "
                            f"safetensors.torch.save_file") from exc


class DiffusersDriver:
    name = "diffusers"

    def handles(self, model_dir: Path) -> bool:
        return (Path(model_dir) / MODEL_INDEX).is_file()

    def default_model(self) -> None:
        return None  # no model ships with diffusers

    def _params(self, model_dir: Path) -> dict[str, inspect.Parameter]:
        return _call_parameters(pipeline_class_name(model_dir))

    def defaults(self, model_dir: Path) -> dict:
        """The pipeline's own defaults for steps and guidance (and a video's frame rate)."""
        params, out = self._params(model_dir), {}
        for field, keyword in (("steps", "num_inference_steps"), ("guidance", "guidance_scale")):
            value = params[keyword].default if keyword in params else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[field] = value
        if self.is_video(model_dir):
            out["fps"] = default_fps(pipeline_class_name(model_dir), params)
        return out

    def size_defaults(self, model_dir: Path) -> dict[str, int]:
        """The sizes a job that gives none renders at: the pipeline's own defaults (``height``,
        ``width``, ``frames``) where they are numbers (FLUX's come from the model: absent)."""
        params, out = self._params(model_dir), {}
        for field in ("height", "width", "frames"):
            keyword = OPTIONAL_FIELDS[field][0]
            value = params[keyword].default if keyword in params else None
            if isinstance(value, int) and not isinstance(value, bool):
                out[field] = value
        return out

    def is_video(self, model_dir: Path) -> bool:
        return "num_frames" in self._params(model_dir)

    def job_fields(self, model_dir: Path) -> dict[str, type]:
        params = self._params(model_dir)
        fields = {f: kind for f, (keyword, kind) in OPTIONAL_FIELDS.items() if keyword in params}
        if EMBEDS_FIELD in params:
            fields[EMBEDS_FIELD] = Path
        if self.is_video(model_dir):
            fields["fps"] = float
        return fields

    def export_plan(self, model_dir: Path, batch_size: int) -> ExportPlan:
        """The family's default profile; the batch axis fits the default --batch-size twice
        over (batched CFG doubles the rows) and widens only for larger batches, so most batch
        sizes share one export."""
        lo, opt, hi = DEFAULT_BATCH
        second = Path(model_dir) / "transformer_2" if has_component(model_dir, "transformer_2") else None
        return ExportPlan(Path(model_dir) / "transformer", {"batch": (lo, opt, max(hi, 2 * batch_size))},
                          transformer_2_dir=second)

    def check_job(self, model_dir: Path, job) -> None:
        params = self._params(model_dir)
        if "fps" in job.extra:
            check_fps(job.extra["fps"])
        embeds = job.extra.get(EMBEDS_FIELD)
        if embeds is None:
            if not has_component(model_dir, "text_encoder"):
                raise TeaCacheError(
                    f"no prompt_embeds, and the pipeline at {model_dir} has no text encoder to encode "
                    f"prompt {shown(job.prompt)}: give prompt_embeds (a safetensors file of the pipeline's "
                    f"*_embeds keywords, e.g. prompt_embeds and pooled_prompt_embeds for FLUX)"
                )
            return
        for key, shape in embeds_header(embeds).items():
            if key not in params or not key.endswith(("_embeds", "_mask")):
                raise TeaCacheError(
                    f"prompt_embeds {embeds.name} holds {key!r}, which {pipeline_class_name(model_dir)} does not "
                    f"take: keep only its *_embeds / *_mask keywords "
                    f"({sorted(k for k in params if k.endswith(('_embeds', '_mask')))})"
                )
            if not shape or shape[0] != 1:
                raise TeaCacheError(f"prompt_embeds {embeds.name}: {key} has shape {shape}; give one prompt "
                                    f"per file (leading dimension 1)")

    def batch_key(self, job):
        """Jobs that one pipeline call can take together: same steps, guidance, size and the
        same embedding names and shapes (they are concatenated)."""
        embeds = job.extra.get(EMBEDS_FIELD)
        text = tuple(embeds_header(embeds).items()) if embeds is not None else ("negative", "negative_prompt" in job.extra)
        sizes = tuple(job.extra.get(f) for f in ("height", "width", "frames", "fps"))
        return (job.steps, job.guidance, sizes, text)

    def load(self, model_dir: Path, art_dir: Path, *, backend: str, device: str, decisions: str,
             art_dir_2: Path | None = None):
        import diffusers

        import teacache_trt

        from ..artifact import Artifact
        from ..dtypes import PRECISIONS

        dtype = PRECISIONS[Artifact.open(art_dir).manifest.precision]
        cls = getattr(diffusers, pipeline_class_name(model_dir))
        # Components the folder lists as absent ([null, null]) must be passed as None; the
        # transformer too: the compiled one replaces it and the PyTorch weights stay on disk.
        absent = {k: None for k, v in model_index(model_dir).items() if isinstance(v, list) and v[-1] is None}
        if art_dir_2 is not None:  # the second expert's compiled transformer replaces its weights too
            absent["transformer_2"] = None
        pipe = cls.from_pretrained(str(model_dir), **absent, transformer=None, **{_dtype_keyword(): dtype}).to(device)
        pipe.set_progress_bar_config(disable=True)  # teacache-render shows its own progress
        teacache_trt.enable(pipe, art_dir, backend=backend, device=device, decisions=decisions, transformer_2=art_dir_2)
        return pipe

    def render_batch(self, pipe, jobs) -> list:
        first = jobs[0]  # a batch shares steps, guidance, size and embedding shapes (batch_key)
        params = _call_parameters(type(pipe).__name__)
        kwargs = {"num_inference_steps": first.steps, "output_type": "pil",
                  # one generator per job: a job's noise does not depend on its batch neighbours
                  "generator": [torch.Generator().manual_seed(j.seed) for j in jobs]}
        if "guidance_scale" in params:
            kwargs["guidance_scale"] = first.guidance
        for field, (keyword, _) in OPTIONAL_FIELDS.items():
            if field in first.extra and field != "negative_prompt":
                kwargs[keyword] = first.extra[field]
        fps = first.extra.get("fps", VIDEO_FPS)  # a batch shares its frame rate (batch_key)
        rate = next((k for k in FRAME_RATE_KEYWORDS if k in params), None)
        if rate is not None and "fps" in first.extra:
            kwargs[rate] = type(params[rate].default)(fps) if isinstance(params[rate].default, (int, float)) else fps
        if EMBEDS_FIELD in first.extra:
            kwargs.update(self._embeds(jobs, pipe))
        else:
            kwargs["prompt"] = [j.prompt for j in jobs]
            if "negative_prompt" in first.extra:
                kwargs["negative_prompt"] = [j.extra["negative_prompt"] for j in jobs]
        watch = FiniteWatch(len(jobs))
        if "callback_on_step_end" in params:
            kwargs.update(callback_on_step_end=watch, callback_on_step_end_tensor_inputs=["latents"])
        out = pipe(**kwargs)
        if hasattr(out, "frames"):
            outputs = [Video(list(frames), fps) for frames in out.frames]
        else:
            outputs = list(out.images)
        return [Failed(watch.error(i, job)) if watch.failed(i) else o for i, (job, o) in enumerate(zip(jobs, outputs))]

    @staticmethod
    def _embeds(jobs, pipe) -> dict[str, torch.Tensor]:
        """Each job's file concatenated along the batch; floats in the pipeline's dtype."""
        from safetensors.torch import load_file

        files = [load_file(str(j.extra[EMBEDS_FIELD])) for j in jobs]
        out = {}
        for key in files[0]:
            t = torch.cat([f[key] for f in files]).to(pipe.device)
            out[key] = t.to(pipe.transformer.dtype) if t.dtype.is_floating_point else t
        return out


def default_fps(class_name: str, params: dict[str, inspect.Parameter]) -> float:
    """The frame rate a video pipeline's model is made for: its own ``frame_rate`` argument's
    default where it has one, else the table above, else ``VIDEO_FPS``."""
    for keyword in FRAME_RATE_KEYWORDS:
        value = params[keyword].default if keyword in params else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return next((fps for prefix, fps in PIPELINE_FPS.items() if class_name.startswith(prefix)), VIDEO_FPS)


class FiniteWatch:
    """A ``callback_on_step_end``: notes, per job, the first step whose latents hold NaN or inf
    (kept on the device; read once after the call)."""

    def __init__(self, jobs: int):
        self.jobs = jobs
        self.first_bad: torch.Tensor | None = None  # step index per job, -1 while finite

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        latents = callback_kwargs.get("latents")
        if isinstance(latents, torch.Tensor) and latents.ndim and latents.shape[0] == self.jobs:  # a row per job
            bad = ~torch.isfinite(latents.reshape(self.jobs, -1)).all(1)
            if self.first_bad is None:
                self.first_bad = torch.full((self.jobs,), -1, dtype=torch.long, device=latents.device)
            self.first_bad = torch.where((self.first_bad < 0) & bad, step, self.first_bad)
        return {}

    def failed(self, i: int) -> bool:
        if self.first_bad is not None and not isinstance(self.first_bad, list):
            self.first_bad = self.first_bad.tolist()
        return self.first_bad is not None and self.first_bad[i] >= 0

    def error(self, i: int, job) -> str:
        return (f"the latents became NaN or infinite at step {self.first_bad[i]} of {job.steps} (guidance "
                f"{job.guidance:g}): the output would be blank; lower the guidance")


DRIVER = DiffusersDriver()
