"""U-Net methods on diffusers U-Nets, as diffusers-style hooks (config in, handle out, fully undoable, visible to the
graph cache key): DeepCache (`enable_deepcache`) and Skip-Tuning (`enable_skip_tuning`), both through the fused
concat ops. A custom U-Net gets Skip-Tuning from `SkipTuning.concat` in its up path."""
from .deepcache import DeepCacheConfig, DeepCacheHandle, apply_deepcache, enable_deepcache
from .skip_tuning import SkipTuning, SkipTuningConfig, SkipTuningHandle, apply_skip_tuning, enable_skip_tuning

__all__ = ["DeepCacheConfig", "DeepCacheHandle", "SkipTuning", "SkipTuningConfig", "SkipTuningHandle",
           "apply_deepcache", "apply_skip_tuning", "enable_deepcache", "enable_skip_tuning"]
