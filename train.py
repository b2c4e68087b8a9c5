"""Train a translation model: python train.py [model=transformer] [key=value ...]
Continue an interrupted run: python train.py resume=RUN_DIR [trainer.max_steps=N ...]"""

import sys

import hydra
from omegaconf import DictConfig

from attnmt.errors import exit_on_user_error
from attnmt.train.resume import resume_argv


def train(cfg: DictConfig) -> float | None:
    from attnmt.train.run import train as run  # Lightning and torch: after Hydra has parsed (--help is quick)

    return run(cfg)


def check_train_config(cfg: DictConfig) -> None:
    from attnmt.train.run import check_train_config as check

    check(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    check_train_config(cfg)  # every value against its constructor's annotations, before any work
    return train(cfg)


if __name__ == "__main__":
    sys.argv = exit_on_user_error(resume_argv)(sys.argv)
    main()
