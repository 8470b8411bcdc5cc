"""Synthetic anomalies, shared by the methods that draw them, deterministic from a numpy
``Generator``:

* CLS-CNFs' training defects (:mod:`.defects`: :class:`DefectSynthesizer`), built from a
  Perlin pattern mask (:mod:`.perlin`), an object mask (:mod:`.foreground`), an augmented
  in-domain or foreign source (:mod:`.augment`, :mod:`.textures`) and a soft label;
* PatchFlow's validation anomalies (:mod:`.validation`: :func:`synthetic_anomaly`), Perlin or
  Gaussian-blob masks filled with shuffled patches of an augmented copy, fed to the feature
  cache as an in-memory image source (:mod:`.image_source`).

The Perlin noise and the augmenters exist once; where the two methods' reimplementations
differ (float operations, ranges), the difference is a parameter, tabled in :mod:`.perlin` and
:mod:`.augment`, so each method's numbers are what they were before the merge.
"""

from nfbench.methods.synthetic.augment import (CLSCNF_AUGMENTERS, PATCHFLOW_AUGMENTERS, augment,
                                               augment_source, patchflow_augment)
from nfbench.methods.synthetic.defects import (DefectSynthesizer, Sample, SyntheticSettings,
                                               soft_label)
from nfbench.methods.synthetic.foreground import (OBJECT_MASK_MODES, OBJECT_MASK_RULES,
                                                  object_mask, object_mask_rule)
from nfbench.methods.synthetic.image_source import DerivedImages, tensor_images
from nfbench.methods.synthetic.perlin import (CLSCNF_PERLIN, PATCHFLOW_PERLIN, pattern_mask,
                                              perlin_noise)
from nfbench.methods.synthetic.textures import DTDTextures, procedural_texture
from nfbench.methods.synthetic.validation import (VALIDATION_AREA, blob_mask, perlin_mask,
                                                  shuffled_patches, synthetic_anomaly)

__all__ = ["CLSCNF_AUGMENTERS", "PATCHFLOW_AUGMENTERS", "augment", "augment_source",
           "patchflow_augment", "DefectSynthesizer", "Sample", "SyntheticSettings", "soft_label",
           "OBJECT_MASK_MODES", "OBJECT_MASK_RULES", "object_mask", "object_mask_rule",
           "DerivedImages", "tensor_images", "CLSCNF_PERLIN", "PATCHFLOW_PERLIN", "pattern_mask",
           "perlin_noise", "DTDTextures", "procedural_texture", "VALIDATION_AREA", "blob_mask",
           "perlin_mask", "shuffled_patches", "synthetic_anomaly"]
