"""The quickstart: a real run on a laptop CPU with no network (`dftune demo`, `make demo`)."""
