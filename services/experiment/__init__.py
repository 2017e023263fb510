"""ExperimentService: server-side A/B assignment, exposures, outcomes and honest statistics."""
