"""distillq workers: the Celery app and its task families (generate, attribute, train)."""
