"""What a person reads: the run page, its figures, contact sheets."""
