"""Train a translation model: python train.py [model=transformer] [key=value ...]
Continue an interrupted run: python train.py resume=RUN_DIR [trainer.max_steps=N ...]"""

import sys

import hydra
from omegaconf import DictConfig

from attnmt.errors import exit_on_user_error
from attnmt.resume import resume_argv
from attnmt.training import check_train_config, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    check_train_config(cfg)  # every value against its constructor's annotations, before any work
    return train(cfg)


if __name__ == "__main__":
    sys.argv = exit_on_user_error(resume_argv)(sys.argv)
    main()
