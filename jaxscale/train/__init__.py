"""Training: the train state, the one train step (written for one seed), ensembles of seeds as one
program, the epoch loop with evaluation at the paper's logged epochs."""

from jaxscale.train.ensemble import seed_map
from jaxscale.train.loop import Experiment, RunStats, build_experiment, make_programs, run_experiment
from jaxscale.train.optim import make_optimizer
from jaxscale.train.schedule import logged_epochs
from jaxscale.train.state import TrainState, seed_keys
from jaxscale.train.step import StepFns, evaluate, init_state, train_epoch, train_step

__all__ = [
    "Experiment", "RunStats", "StepFns", "TrainState", "build_experiment", "evaluate", "init_state",
    "logged_epochs", "make_optimizer", "make_programs", "run_experiment",
    "seed_keys", "seed_map", "train_epoch", "train_step",
]
