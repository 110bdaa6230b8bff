"""One thin entry point per DVC stage: parse paths, load config, call one library function."""
