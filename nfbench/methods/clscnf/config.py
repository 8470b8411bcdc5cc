"""CLS-CNFs' settings: the shared CNF settings (:mod:`nfbench.methods.cnf.config`) plus the
synthetic defects, the feature-extractor fine-tuning, the score map and ``w``. Defaults: the
paper (§III, §IV-B) completed by AD-CLSCNFs' config.py and run scripts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nfbench.methods import package_data
from nfbench.errors import UserError
from nfbench.methods.base import NON_NEGATIVE, POSITIVE, PROBABILITY, setting
from nfbench.methods.synthetic.foreground import OBJECT_MASK_MODES
from nfbench.methods.cnf.config import CNFMethodConfig



def _original_w() -> dict[str, float]:
    """w per category in the original run scripts (AD-CLSCNFs run_scripts/<ds>/<cls>/
    train_eval_total.sh, ``--w_fe``; docs/original-code.md §1b): test-tuned, see
    ``original_w.yaml`` beside this module (data, one block per dataset), checked here."""
    name = "original_w.yaml"
    out: dict[str, float] = {}
    for dataset, block in package_data.load(__file__, name).items():
        if not isinstance(block, dict):
            package_data.fail(__file__, name, dataset, "expected {category: w}")
        for category, w in block.items():
            if not isinstance(category, str) or isinstance(w, bool) or \
                    not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0 or category in out:
                package_data.fail(__file__, name, f"{dataset}.{category}",
                                  f"expected a new category name and a w in [0, 1], got {w!r}")
            out[category] = float(w)
    return out


#: w per category in the original run scripts (test-tuned; ``original_w.yaml``)
ORIGINAL_W: dict[str, float] = _original_w()
#: The original's search grid for w (evaluate.py ``--get_best_w_fe``).
W_GRID = tuple(round(0.05 * k, 2) for k in range(1, 21))

FINETUNES = ("cls", "reg", "none")
SCORE_MAPS = ("joint", "nf", "cls")
FOREIGN_SOURCES = ("dtd", "procedural")


@dataclass(frozen=True)
class CLSCNFConfig(CNFMethodConfig):
    """Defaults: the paper (§III, §IV-B) completed by AD-CLSCNFs' config.py and run scripts.
    The CNF stage's fields (train_CNFs_finetune.py) are cflow's, at its defaults but one."""

    n_blocks: int = 6  # §III-B3 / config coupling_blocks (the one CNF default unlike cflow's)
    finetune: str = setting("cls", choices=FINETUNES)  # cls (FE_CLS) | reg (FE_REG, Table 1) | none (FE_PRE)
    # FE_REG loss. l1_sigmoid: the original's (sigmoid output, ImageNet-normalised, L1 summed
    # over RGB) | mse_linear: linear output, squared error summed over RGB (ours before issue 11)
    fe_reg_loss: str = setting("l1_sigmoid", choices=("l1_sigmoid", "mse_linear"))
    score_map: str = setting("joint", choices=SCORE_MAPS)  # joint A (Eq. 9) | nf A_nf | cls A_p (Table 2)
    shared_encoder: bool = True  # True: CLS-CNFs-sFE (proposed); False: CLS-CNFs-nsFE
    w: Any = "original"  # float | "original" (test-tuned table) | "synthetic"; fit's value: w_
    w_fallback: float = 1.0  # w for categories outside ORIGINAL_W (its most frequent value)
    w_grid: tuple[float, ...] = W_GRID  # evaluate.py --get_best_w_fe grid
    # synthetic defects (§III-A; synthetic_data_loader.py)
    object_mask: str = setting("auto", choices=OBJECT_MASK_MODES)  # auto: the original's per-category rules | dark | bright | none
    foreign_source: str = setting("dtd", choices=FOREIGN_SOURCES)  # §III-A: DTD | procedural (offline stand-in)
    dtd_root: str = ""  # DTD folder; "" = <datasets>/dtd
    in_domain_prob: float = setting(0.5, range=PROBABILITY)  # config use_in_domain_data: half in-domain sources
    beta_max: float = 0.8  # beta ~ U(0, 0.8)
    perlin_max_exponent: int = setting(6, range=NON_NEGATIVE)  # Perlin lattice 2^randint(0, 6)
    perlin_threshold: float = 0.5
    soft_label: str = setting("image", choices=("image", "pixel"))  # image: one value per defect (code) | pixel: per pixel (paper)
    label_gain: float = 5.0  # sigmoid(5 * colour difference)
    regen_every: int = 1  # N_s in passes; the code redraws every sample on access (= 1)
    # FE stage (finetune_enc.py; run scripts: most MVTec categories)
    fe_lr: float = setting(1e-4, range=POSITIVE)  # run scripts (config default 2e-4)
    fe_weight_decay: float = setting(1e-4, range=NON_NEGATIVE)  # config w_decay
    fe_batch_size: int = 32  # run scripts: 32 or 16
    fe_freeze_epochs: int = setting(85, range=NON_NEGATIVE)  # N_pD: decoder-only meta-epochs (run scripts: 85)
    fe_meta_epochs: int = 15  # encoder + decoder meta-epochs (run scripts: 15)
    fe_sub_epochs: int = 2  # passes per meta-epoch (run scripts: 2)
    fe_repeat: int = 5  # config repeat_num: each pass sees every image 5 times
    fe_lr_min_factor: float = setting(1e-3, range=PROBABILITY)  # cosine eta_min = lr * 0.1^3, no warm-up (--lr_warm no)
    decoder_blocks: tuple[int, ...] = (3, 6, 4, 3)  # WideResNetDec([3, 6, 4, 3])
    decoder_width_scale: float = setting(0.25, range=POSITIVE)  # §III-B2: 1/4 of the encoder's channels
    decoder_prior: float = 0.0  # 0: Kaiming init as the original; p > 0: start at A_p = p

    def check(self) -> None:
        super().check()
        if self.score_map != "nf" and self.finetune != "cls":
            raise UserError(f"score_map={self.score_map} needs the classification network "
                            f"(finetune=cls), got finetune={self.finetune}")
        if not self.shared_encoder and self.finetune != "cls":
            raise UserError("shared_encoder=false (CLS-CNFs-nsFE) needs finetune=cls")
        if self.input_size % 32:
            raise UserError(f"input_size must be a multiple of 32, got {self.input_size}")
        if len(self.decoder_blocks) != 4:
            raise UserError("decoder_blocks needs 4 entries")
        parse_w(self.w)

    # what a configuration needs
    @property
    def needs_nf(self) -> bool:
        return self.score_map in ("joint", "nf")

    @property
    def needs_cls(self) -> bool:
        return self.score_map in ("joint", "cls")

    @property
    def nf_on_frozen(self) -> bool:
        return self.finetune == "none" or not self.shared_encoder


def parse_w(value: Any) -> float | str:
    """``w`` as a float, or one of ``"original"`` / ``"synthetic"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        if value in ("original", "synthetic"):
            return value
        try:
            return float(value)
        except ValueError:
            pass
    raise UserError(f"w must be a number, 'original' or 'synthetic', got {value!r}")
