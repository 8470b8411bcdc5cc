"""The conditional-normalizing-flow machinery CFlow-AD (``cflow``) and CLS-CNFs (``clscnf``)
share: settings (:mod:`.config`), flows (:mod:`.flows`), their training (:mod:`.training`),
the A_nf map (:mod:`.scoring`), the feature extractor (:mod:`.encoder`) and the on-disk stage
cache (:mod:`.stage`)."""

from nfbench.methods.cnf.config import (NORMALIZATIONS, CNFMethodConfig, CNFSettings,
                                        apply_category_settings, category_of, cnf_fields)
from nfbench.methods.cnf.encoder import (LAYERS, PADDINGS, build_encoder, extract,
                                         frozen_features, set_padding)
from nfbench.methods.cnf.flows import (build_conditional_flow, build_flows, fibers,
                                       log_likelihood, nf_loss, positional_encoding_2d,
                                       random_rotation)
from nfbench.methods.cnf.scoring import (NFMap, anomaly_from_normal, image_scores, layer_maxima,
                                         log_likelihood_maps, normal_score_map)
from nfbench.methods.cnf.stage import StageCache, fit_cnf_stage, stage_code
from nfbench.methods.cnf.training import (learning_rate, schedule_info, train_flows,
                                          warmup_meta_epochs)

__all__ = ["NORMALIZATIONS", "CNFMethodConfig", "CNFSettings", "apply_category_settings",
           "category_of", "cnf_fields", "LAYERS", "PADDINGS", "build_encoder", "extract",
           "frozen_features", "set_padding", "build_conditional_flow", "build_flows", "fibers",
           "log_likelihood", "nf_loss", "positional_encoding_2d", "random_rotation", "NFMap",
           "anomaly_from_normal", "image_scores", "layer_maxima", "log_likelihood_maps",
           "normal_score_map", "StageCache", "fit_cnf_stage", "stage_code",
           "learning_rate", "schedule_info", "train_flows", "warmup_meta_epochs"]
