"""The run's plumbing: the stages the entry points chain (:mod:`.stages`), config checks (:mod:`.validation`), cache
keys (:mod:`.cache`), atomic files and locks (:mod:`.files`), provenance and loggers."""
