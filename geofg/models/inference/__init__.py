"""Running a model bundle: cards, bundles, the registry, networks, predictors, ensembles."""
