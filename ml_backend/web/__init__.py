"""The HTTP edge: the Flask app and its gunicorn entry point, every request body checked before use,
and the model class whose methods the routes call (/setup, /predict, webhooks)."""
