"""Evaluate a checkpoint: python evaluate.py ckpt=PATH [split=test] [eval.num_plots=10]"""

import hydra
from omegaconf import DictConfig

from attnmt.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from attnmt.eval.evaluate import evaluate  # torch and the models: after Hydra has parsed (--help is quick)

    evaluate(cfg)


if __name__ == "__main__":
    main()
