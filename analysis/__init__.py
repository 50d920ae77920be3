"""MLflow runs → frames → statistics → figures → a report that answers the question."""
