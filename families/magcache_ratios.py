"""MagCache's published magnitude ratios, as family data (one place for every family's lists).

MagCache (Ma et al. 2025, arXiv 2506.09045; github.com/Zehong-Ma/MagCache) skips the blocks
while the drift of the residual's magnitude, predicted from per-step ratios measured offline,
stays small.  A model's ratios are ``mag_ratios[i]``: the mean over tokens of
``||residual_i|| / ||residual_{i-1}||`` of one cache context (CFG branch), entry 0 a 1.0 pad.

Each :class:`PublishedRatios` below is one model's list as MagCache's scripts print it (from
step 1 on, no pad) with the settings its scripts or README use for that model; the exporter
writes ``policy_data()`` into the manifest, where ``policies.MagCache()`` reads it.  Lists of
true-CFG models (two calls per step) alternate cond and uncond entries (``interleaved``).

Values are the published ones, unchanged.  Upstream measured them at one step count
(``steps``); another step count interpolates them (nearest entry, per context).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import TeaCacheError

# diffusers pipelines name their CFG branches with these cache contexts (true CFG: cond first)
COND, UNCOND = "cond", "uncond"


def per_context(ratios: Sequence[float], interleaved: bool) -> list[float] | dict[str, list[float]]:
    """MagCache's printed layout -> the runtime's: ``[1.0] + ratios`` (one call per step), or
    ``{"cond": [1.0] + ratios[0::2], "uncond": [1.0] + ratios[1::2]}`` for a list that
    alternates the branches (the scripts' ``[1.0, 1.0]`` pad, one 1.0 per branch)."""
    if isinstance(ratios, (str, bytes, dict)) or not isinstance(ratios, Sequence):
        raise TeaCacheError(f"MagCache ratios {ratios!r:.100} must be a list of numbers, as MagCache prints them")
    values = list(ratios)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values):
        raise TeaCacheError(f"MagCache ratios {values!r:.200} must be finite numbers > 0")
    if not interleaved:
        return [1.0, *map(float, values)]
    if len(values) % 2:
        raise TeaCacheError(
            f"an interleaved MagCache list alternates cond and uncond entries, so its length is even; this one "
            f"has {len(values)}: pass interleaved=False for a model with one call per step")
    return {COND: [1.0, *map(float, values[0::2])], UNCOND: [1.0, *map(float, values[1::2])]}


@dataclass(frozen=True)
class PublishedRatios:
    """One model's published ratios (printed layout) and MagCache's settings for that model."""

    model: str
    ratios: tuple[float, ...]
    interleaved: bool
    steps: int  # the step count the ratios were measured at
    threshold: float
    max_skips: int
    retention_ratio: float

    def __post_init__(self):
        per_context(self.ratios, self.interleaved)  # checks the values
        want = (2 if self.interleaved else 1) * (self.steps - 1)
        if len(self.ratios) != want:
            raise TeaCacheError(f"MagCache ratios of {self.model}: {len(self.ratios)} values for {self.steps} steps; "
                                f"expected {want}")

    def policy_data(self) -> dict[str, Any]:
        """What the manifest records for MagCache (``policy_data["magcache"]``)."""
        return {"mag_ratios": per_context(self.ratios, self.interleaved), "threshold": self.threshold,
                "max_skips": self.max_skips, "retention_ratio": self.retention_ratio, "steps": self.steps,
                "source": f"MagCache's published ratios for {self.model} ({self.steps} steps)"}


# --- FLUX: one call per step (guidance-distilled) --------------------------------------------------
# MagCache4FLUX's settings: K 5, threshold 0.24, retention 0.1.
FLUX_1_DEV = PublishedRatios(
    "FLUX.1-dev", (
        1.21094, 1.11719, 1.07812, 1.0625, 1.03906, 1.03125, 1.03906, 1.02344, 1.03125, 1.02344,
        0.98047, 1.01562, 1.00781, 1.0, 1.00781, 1.0, 1.00781, 1.0, 1.0, 0.99609,
        0.99609, 0.98047, 0.98828, 0.96484, 0.95703, 0.93359, 0.89062,
    ), interleaved=False, steps=28, threshold=0.24, max_skips=5, retention_ratio=0.1)

# --- Qwen-Image: true CFG, cond and uncond alternate ------------------------------------------------
# MagCache4QwenImage(Edit)'s defaults: threshold 0.06, K 2, retention 0.2 (50 steps).
QWEN_IMAGE = PublishedRatios(
    "Qwen-Image", (
        1.64062, 1.64062, 1.45312, 1.45312, 1.1875, 1.1875, 1.17188, 1.17188, 1.05469, 1.05469,
        1.21094, 1.21094, 1.10938, 1.10938, 1.11719, 1.11719, 1.13281, 1.13281, 1.11719, 1.11719,
        1.07812, 1.07812, 1.07031, 1.07031, 1.08594, 1.08594, 1.08594, 1.08594, 1.07812, 1.07812,
        1.03906, 1.03906, 1.04688, 1.04688, 1.07812, 1.07812, 1.07031, 1.07031, 1.03125, 1.03125,
        1.07812, 1.07812, 1.04688, 1.04688, 1.04688, 1.04688, 1.04688, 1.04688, 1.03906, 1.03906,
        1.01562, 1.01562, 1.03125, 1.03125, 1.02344, 1.02344, 1.02344, 1.02344, 1.02344, 1.02344,
        1.03906, 1.03906, 1.0, 1.0, 1.01562, 1.01562, 1.0, 1.0, 0.99219, 0.99219,
        1.00781, 1.00781, 0.98047, 0.98047, 0.95703, 0.95703, 0.96875, 0.96875, 0.99219, 0.99219,
        0.92578, 0.92578, 0.92578, 0.92578, 0.90625, 0.90625, 0.85938, 0.85938, 0.80469, 0.80469,
        0.87891, 0.87891, 0.75, 0.75, 0.60938, 0.60938, 0.55078, 0.55078,
    ), interleaved=True, steps=50, threshold=0.06, max_skips=2, retention_ratio=0.2)

QWEN_IMAGE_EDIT = PublishedRatios(
    "Qwen-Image-Edit", (
        1.41406, 1.41406, 1.09375, 1.09375, 1.3125, 1.3125, 1.20312, 1.20312, 1.0625, 1.0625,
        1.125, 1.125, 1.14062, 1.14062, 1.17969, 1.17969, 1.09375, 1.09375, 1.10938, 1.10938,
        1.10938, 1.10938, 1.07031, 1.07031, 1.04688, 1.04688, 1.09375, 1.09375, 1.03906, 1.03906,
        1.0625, 1.0625, 1.04688, 1.04688, 1.0625, 1.0625, 1.04688, 1.04688, 1.07031, 1.0625,
        1.03125, 1.03125, 1.03906, 1.03906, 1.03906, 1.03906, 1.02344, 1.02344, 1.01562, 1.01562,
        1.03125, 1.03125, 1.00781, 1.00781, 1.01562, 1.01562, 1.00781, 1.00781, 1.01562, 1.01562,
        1.0, 1.0, 1.0, 1.0, 0.98828, 0.98828, 0.98047, 0.98047, 0.98047, 0.98047,
        0.97266, 0.97266, 0.92578, 0.92578, 0.94922, 0.94922, 0.98438, 0.98438, 0.89844, 0.89844,
        0.91797, 0.91797, 0.92188, 0.92188, 0.84375, 0.84375, 0.82812, 0.82812, 0.78516, 0.78516,
        0.87891, 0.87891, 0.71094, 0.71094, 0.56641, 0.56641, 0.50781, 0.50781,
    ), interleaved=True, steps=50, threshold=0.06, max_skips=2, retention_ratio=0.2)

# --- Wan2.1: true CFG, cond and uncond alternate ----------------------------------------------------
# MagCache4Wan2.1's README per model: T2V-1.3B threshold 0.12, K 4; T2V-14B and I2V-14B
# threshold 0.24, K 6; retention 0.2 throughout.  T2V at 50 steps, I2V at 40.
WAN21_T2V_1_3B = PublishedRatios(
    "Wan2.1-T2V-1.3B", (
        1.0124, 1.02213, 1.00166, 1.0041, 0.99791, 1.00061, 0.99682, 0.99762, 0.99634, 0.99685,
        0.99567, 0.99586, 0.99416, 0.99422, 0.99578, 0.99575, 0.9957, 0.99563, 0.99511, 0.99506,
        0.99535, 0.99531, 0.99552, 0.99549, 0.99541, 0.99539, 0.9954, 0.99536, 0.99489, 0.99485,
        0.99518, 0.99514, 0.99484, 0.99478, 0.99481, 0.99479, 0.99415, 0.99413, 0.99419, 0.99416,
        0.99396, 0.99393, 0.99388, 0.99386, 0.99349, 0.99349, 0.99309, 0.99304, 0.9927, 0.9927,
        0.99228, 0.99226, 0.99171, 0.9917, 0.99137, 0.99135, 0.99068, 0.99063, 0.99005, 0.99003,
        0.98944, 0.98942, 0.98849, 0.98849, 0.98758, 0.98757, 0.98644, 0.98643, 0.98504, 0.98503,
        0.9836, 0.98359, 0.98202, 0.98201, 0.97977, 0.97978, 0.97717, 0.97718, 0.9741, 0.97411,
        0.97003, 0.97002, 0.96538, 0.96541, 0.9593, 0.95933, 0.95086, 0.95089, 0.94013, 0.94019,
        0.92402, 0.92414, 0.90241, 0.9026, 0.86821, 0.86868, 0.81838, 0.81939,
    ), interleaved=True, steps=50, threshold=0.12, max_skips=4, retention_ratio=0.2)

WAN21_T2V_14B = PublishedRatios(
    "Wan2.1-T2V-14B", (
        1.02504, 1.03017, 1.00025, 1.00251, 0.9985, 0.99962, 0.99779, 0.99771, 0.9966, 0.99658,
        0.99482, 0.99476, 0.99467, 0.99451, 0.99664, 0.99656, 0.99434, 0.99431, 0.99533, 0.99545,
        0.99468, 0.99465, 0.99438, 0.99434, 0.99516, 0.99517, 0.99384, 0.9938, 0.99404, 0.99401,
        0.99517, 0.99516, 0.99409, 0.99408, 0.99428, 0.99426, 0.99347, 0.99343, 0.99418, 0.99416,
        0.99271, 0.99269, 0.99313, 0.99311, 0.99215, 0.99215, 0.99218, 0.99215, 0.99216, 0.99217,
        0.99163, 0.99161, 0.99138, 0.99135, 0.98982, 0.9898, 0.98996, 0.98995, 0.9887, 0.98866,
        0.98772, 0.9877, 0.98767, 0.98765, 0.98573, 0.9857, 0.98501, 0.98498, 0.9838, 0.98376,
        0.98177, 0.98173, 0.98037, 0.98035, 0.97678, 0.97677, 0.97546, 0.97543, 0.97184, 0.97183,
        0.96711, 0.96708, 0.96349, 0.96345, 0.95629, 0.95625, 0.94926, 0.94929, 0.93964, 0.93961,
        0.92511, 0.92504, 0.90693, 0.90678, 0.8796, 0.87945, 0.86111, 0.86189,
    ), interleaved=True, steps=50, threshold=0.24, max_skips=6, retention_ratio=0.2)

WAN21_I2V_14B_480P = PublishedRatios(
    "Wan2.1-I2V-14B-480P", (
        0.98783, 0.98993, 0.97559, 0.97593, 0.98311, 0.98319, 0.98202, 0.98225, 0.9888, 0.98878,
        0.98762, 0.98759, 0.98957, 0.98971, 0.99052, 0.99043, 0.99383, 0.99384, 0.98857, 0.9886,
        0.99065, 0.99068, 0.98845, 0.98847, 0.99057, 0.99057, 0.98957, 0.98961, 0.98601, 0.9861,
        0.98823, 0.98823, 0.98756, 0.98759, 0.98808, 0.98814, 0.98721, 0.98724, 0.98571, 0.98572,
        0.98543, 0.98544, 0.98157, 0.98165, 0.98411, 0.98413, 0.97952, 0.97953, 0.98149, 0.9815,
        0.9774, 0.97742, 0.97825, 0.97826, 0.97355, 0.97361, 0.97085, 0.97087, 0.97056, 0.97055,
        0.96588, 0.96587, 0.96113, 0.96124, 0.9567, 0.95681, 0.94961, 0.94969, 0.93973, 0.93988,
        0.93217, 0.93224, 0.91878, 0.91896, 0.90955, 0.90954, 0.92617, 0.92616,
    ), interleaved=True, steps=40, threshold=0.24, max_skips=6, retention_ratio=0.2)

WAN21_I2V_14B_720P = PublishedRatios(
    "Wan2.1-I2V-14B-720P", (
        0.99428, 0.99498, 0.98588, 0.98621, 0.98273, 0.98281, 0.99018, 0.99023, 0.98911, 0.98917,
        0.98646, 0.98652, 0.99454, 0.99456, 0.9891, 0.98909, 0.99124, 0.99127, 0.99102, 0.99103,
        0.99215, 0.99212, 0.99515, 0.99515, 0.99576, 0.99572, 0.99068, 0.99072, 0.99097, 0.99097,
        0.99166, 0.99169, 0.99041, 0.99042, 0.99201, 0.99198, 0.99101, 0.99101, 0.98599, 0.98603,
        0.98845, 0.98844, 0.98848, 0.98851, 0.98862, 0.98857, 0.98718, 0.98719, 0.98497, 0.98497,
        0.98264, 0.98263, 0.98389, 0.98393, 0.97938, 0.9794, 0.97535, 0.97536, 0.97498, 0.97499,
        0.973, 0.97301, 0.96827, 0.96828, 0.96261, 0.96263, 0.95335, 0.9534, 0.94649, 0.94655,
        0.93397, 0.93414, 0.91636, 0.9165, 0.89088, 0.89109, 0.8679, 0.86768,
    ), interleaved=True, steps=40, threshold=0.24, max_skips=6, retention_ratio=0.2)

# --- Wan2.2: true CFG, cond and uncond alternate ----------------------------------------------------
# MagCache's Wan2.2 lists (its Wan2.2 folder; the same lists ship in its ComfyUI node) and its
# Wan2.2 README's settings: threshold 0.06, K 2; retention 0.2 (TI2V-5B), 0.4 (T2V-A14B), 0.1
# (I2V-A14B).  TI2V-5B at 50 steps; the A14B lists cover a whole 40-step generation of both experts.
WAN22_TI2V_5B = PublishedRatios(
    "Wan2.2-TI2V-5B", (
        0.99505, 0.99389, 0.99441, 0.9957, 0.99558, 0.99551, 0.99499, 0.9945, 0.99534, 0.99548,
        0.99468, 0.9946, 0.99463, 0.99458, 0.9946, 0.99453, 0.99408, 0.99404, 0.9945, 0.99441,
        0.99409, 0.99398, 0.99403, 0.99397, 0.99382, 0.99377, 0.99349, 0.99343, 0.99377, 0.99378,
        0.9933, 0.99328, 0.99303, 0.99301, 0.99217, 0.99216, 0.992, 0.99201, 0.99201, 0.99202,
        0.99133, 0.99132, 0.99112, 0.9911, 0.99155, 0.99155, 0.98958, 0.98957, 0.98959, 0.98958,
        0.98838, 0.98835, 0.98826, 0.98825, 0.9883, 0.98828, 0.98711, 0.98709, 0.98562, 0.98561,
        0.98511, 0.9851, 0.98414, 0.98412, 0.98284, 0.98282, 0.98104, 0.98101, 0.97981, 0.97979,
        0.97849, 0.97849, 0.97557, 0.97554, 0.97398, 0.97395, 0.97171, 0.97166, 0.96917, 0.96913,
        0.96511, 0.96507, 0.96263, 0.96257, 0.95839, 0.95835, 0.95483, 0.95475, 0.94942, 0.94936,
        0.9468, 0.94678, 0.94583, 0.94594, 0.94843, 0.94872, 0.96949, 0.97015,
    ), interleaved=True, steps=50, threshold=0.06, max_skips=2, retention_ratio=0.2)

# The A14B lists as published: 78 entries, steps 1-39 of a 40-step generation, cond/uncond
# interleaved.  The ratio where the expert changes (step 26 of T2V at shift 12 and boundary
# 0.875, step 15 of I2V at shift 5 and boundary 0.9: 0.655 and 0.911) compares the two experts'
# residuals; the project keeps a state per expert, whose first step computes anyway.
WAN22_T2V_A14B_40_STEPS = (
    1.00124, 1.00155, 0.99822, 0.99851, 0.99696, 0.99687, 0.99703, 0.99732, 0.9966, 0.99679,
    0.99602, 0.99658, 0.99578, 0.99664, 0.99484, 0.9949, 0.99633, 0.996, 0.99659, 0.99683,
    0.99534, 0.99549, 0.99584, 0.99577, 0.99681, 0.99694, 0.99563, 0.99554, 0.9944, 0.99473,
    0.99594, 0.9964, 0.99466, 0.99461, 0.99453, 0.99481, 0.99389, 0.99365, 0.99391, 0.99406,
    0.99354, 0.99361, 0.99283, 0.99278, 0.99268, 0.99263, 0.99057, 0.99091, 0.99125, 0.99126,
    0.65523, 0.65252, 0.98808, 0.98852, 0.98765, 0.98736, 0.9851, 0.98535, 0.98311, 0.98339,
    0.9805, 0.9806, 0.97776, 0.97771, 0.97278, 0.97286, 0.96731, 0.96728, 0.95857, 0.95855,
    0.94385, 0.94385, 0.92118, 0.921, 0.88108, 0.88076, 0.80263, 0.80181,
)
WAN22_I2V_A14B_40_STEPS = (
    0.99191, 0.99144, 0.99356, 0.99337, 0.99326, 0.99285, 0.99251, 0.99264, 0.99393, 0.99366,
    0.9943, 0.9943, 0.99276, 0.99288, 0.99389, 0.99393, 0.99274, 0.99289, 0.99316, 0.9931,
    0.99379, 0.99377, 0.99268, 0.99271, 0.99222, 0.99227, 0.99175, 0.9916, 0.91076, 0.91046,
    0.98931, 0.98933, 0.99087, 0.99088, 0.98852, 0.98855, 0.98895, 0.98896, 0.98806, 0.98808,
    0.9871, 0.98711, 0.98613, 0.98618, 0.98434, 0.98435, 0.983, 0.98307, 0.98185, 0.98187,
    0.98131, 0.98131, 0.9783, 0.97835, 0.97619, 0.9762, 0.97264, 0.9727, 0.97088, 0.97098,
    0.96568, 0.9658, 0.96045, 0.96055, 0.95322, 0.95335, 0.94579, 0.94594, 0.93297, 0.93311,
    0.91699, 0.9172, 0.89174, 0.89202, 0.8541, 0.85446, 0.79823, 0.79902,
)


def expert_ratios(model: str, whole: Sequence[float], first: int, steps: int, retention_ratio: float,
                  threshold: float = 0.06, max_skips: int = 2) -> PublishedRatios:
    """One expert's part of an interleaved list over a whole generation: its steps ``first`` ..
    ``first + steps - 1``, without the entry of its first step (which compares it with the other
    expert's last residual).  MagCache keeps a retention window per expert: here each expert's
    cache contexts count their own steps, so ``retention_ratio`` applies to them."""
    return PublishedRatios(model, tuple(whole[2 * first:2 * (first + steps - 1)]), interleaved=True, steps=steps,
                           threshold=threshold, max_skips=max_skips, retention_ratio=retention_ratio)


WAN22_T2V_A14B_HIGH = expert_ratios("Wan2.2-T2V-A14B high-noise expert (steps 0-25 of 40)",
                                    WAN22_T2V_A14B_40_STEPS, 0, 26, 0.4)
WAN22_T2V_A14B_LOW = expert_ratios("Wan2.2-T2V-A14B low-noise expert (steps 26-39 of 40)",
                                   WAN22_T2V_A14B_40_STEPS, 26, 14, 0.4)
WAN22_I2V_A14B_HIGH = expert_ratios("Wan2.2-I2V-A14B high-noise expert (steps 0-14 of 40)",
                                    WAN22_I2V_A14B_40_STEPS, 0, 15, 0.1)
WAN22_I2V_A14B_LOW = expert_ratios("Wan2.2-I2V-A14B low-noise expert (steps 15-39 of 40)",
                                   WAN22_I2V_A14B_40_STEPS, 15, 25, 0.1)

# --- HunyuanVideo: one call per step (embedded guidance) --------------------------------------------
# MagCache4HunyuanVideo's settings: threshold 0.24, K 6, retention 0.2; lists for 720p (the
# model's default size, shipped) and 544p (MagCache.from_upstream(HUNYUAN_VIDEO_544P.ratios,
# interleaved=False) selects it).
HUNYUAN_VIDEO_720P = PublishedRatios(
    "HunyuanVideo 720p", (
        1.0754, 1.27807, 1.11596, 1.09504, 1.05188, 1.00844, 1.05779, 1.00657, 1.04142, 1.03101,
        1.00679, 1.02556, 1.00908, 1.06949, 1.05438, 1.02214, 1.02321, 1.03019, 1.00779, 1.03381,
        1.01886, 1.01161, 1.02968, 1.00544, 1.02822, 1.00689, 1.02119, 1.0105, 1.01044, 1.01572,
        1.02972, 1.0094, 1.02368, 1.0226, 0.98965, 1.01588, 1.02146, 1.0018, 1.01687, 0.99436,
        1.00283, 1.01139, 0.97122, 0.98251, 0.94513, 0.97656, 0.90943, 0.85703, 0.75456,
    ), interleaved=False, steps=50, threshold=0.24, max_skips=6, retention_ratio=0.2)

HUNYUAN_VIDEO_544P = PublishedRatios(
    "HunyuanVideo 544p", (
        1.06971, 1.29073, 1.11245, 1.09596, 1.05233, 1.01415, 1.05672, 1.00848, 1.03632, 1.02974,
        1.00984, 1.03028, 1.00681, 1.06614, 1.05022, 1.02592, 1.01776, 1.02985, 1.00726, 1.03727,
        1.01502, 1.00992, 1.03371, 0.9976, 1.02742, 1.0093, 1.01869, 1.00815, 1.01461, 1.01152,
        1.03082, 1.0061, 1.02162, 1.01999, 0.99063, 1.01186, 1.0217, 0.99947, 1.01711, 0.9904,
        1.00258, 1.00878, 0.97039, 0.97686, 0.94315, 0.97728, 0.91154, 0.86139, 0.76592,
    ), interleaved=False, steps=50, threshold=0.24, max_skips=6, retention_ratio=0.2)
