//! `celeriac import-celery`: a Celery `beat_schedule` dump to YAML.
