"""The smallest Django site that exercises the PostgreSQL backend: one app, the
connection from the environment (SQL_TOOLS_DATABASE, a JSON object: host, port, user,
password, name, sslmode)."""

import json
import os

_db = json.loads(os.environ["SQL_TOOLS_DATABASE"])

SECRET_KEY = "acceptance-tests-only"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "catalog"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": _db["host"],
        "PORT": _db["port"],
        "USER": _db["user"],
        "PASSWORD": _db["password"],
        "NAME": _db["name"],
        "OPTIONS": {"sslmode": _db.get("sslmode", "require")},
    }
}
