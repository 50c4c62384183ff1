"""The operator's I/O with the API server: a small async client (`api`) and the kopf runner
both processes start from (`runner`)."""
