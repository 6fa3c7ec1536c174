"""Learning material built on the library: the tour, worked examples, practice, experiments, cheat sheet."""
