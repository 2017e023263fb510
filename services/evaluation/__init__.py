"""EvaluationService: datasets, evaluation runs with scorers, reports, gates, online monitoring."""
