"""The optimizer: candidate cache, plan application, ILP seeds, Optuna study, fronts."""
