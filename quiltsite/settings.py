"""Settings for the quiltsite demo, read from environment variables.

Unset variables give the embedded default: SQLite, django-q2's ORM broker and
a file-based cache, so the site runs on a fresh machine with no services.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from django.utils.csp import CSP

from quiltsite.environment import env_bool, env_int, env_list, queues_from_env, secret_key_file

BASE_DIR = Path(__file__).resolve().parent.parent


# Everything the site writes at run time (database, cache, secret key) lives here,
# outside version control.
DATA_DIR = Path(os.environ.get("LONGTASK_DATA_DIR", BASE_DIR / "var"))  # made by apps.ready


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secret_key_file(DATA_DIR / "secret_key")
DEBUG = env_bool("DJANGO_DEBUG")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "axes",
    "longtask",
    "quiltsite",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "quiltsite.middleware.AdminStylesMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a refused sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# Security headers on every response (SECURITY.md). Scripts and styles: only the site's
# own files, never inline (the quilt colours its squares with SVG fill attributes). The
# admin's pages alone also allow inline styles (quiltsite.middleware.AdminStylesMiddleware).
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "connect-src": [CSP.SELF],  # CSP level 3: 'self' covers the same host's ws:/wss:
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}
SECURE_CONTENT_TYPE_NOSNIFF = True
# Behind a TLS-terminating proxy (.env.example, "Production"). Off by default: the
# embedded default serves plain HTTP on 127.0.0.1, and HSTS cannot be taken back.
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT")
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE")
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE")
# "HEADER,value", e.g. "X-Forwarded-Proto,https": the header your proxy always sets
# (and strips from clients); a request carrying it with that value is HTTPS.
SECURE_PROXY_SSL_HEADER = None
if _proxy_header := os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER", "").strip():
    _name, _, _value = _proxy_header.partition(",")
    SECURE_PROXY_SSL_HEADER = (
        "HTTP_" + _name.strip().upper().replace("-", "_").removeprefix("HTTP_"),
        _value.strip(),
    )
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

ROOT_URLCONF = "quiltsite.urls"
ASGI_APPLICATION = "quiltsite.asgi.application"
WSGI_APPLICATION = "quiltsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Services are chosen by environment variables (see .env.example); unset, the
# embedded default needs no server at all.
DATABASE_URL = os.environ.get("DATABASE_URL", "").strip()
REDIS_URL = os.environ.get("REDIS_URL", "").strip()

if DATABASE_URL:
    import dj_database_url

    # PostgreSQL through psycopg 3. Persistent connections: a worker reconnecting per
    # job runs the ORM six times slower (ANCHORS: 30 vs 180 jobs/s); the health check
    # replaces a connection that a database restart has broken.
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=env_int("LONGTASK_CONN_MAX_AGE", 600),
            conn_health_checks=True,
        )
    }
else:
    # SQLite tuned for one web process and several worker processes writing at once:
    # WAL lets readers run beside the writer, IMMEDIATE takes the write lock at BEGIN
    # (so a transaction never fails mid-way upgrading a read lock), and the timeout
    # makes a writer wait for the lock instead of raising "database is locked".
    # Persistent connections here too: django-q2 closes old connections around every
    # job, acknowledgement and broker poll, and reopening SQLite (with these PRAGMAs)
    # each time made a no-op @task cost about three times what its queries do.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "db.sqlite3",
            "CONN_MAX_AGE": env_int("LONGTASK_CONN_MAX_AGE", 600),
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": (
                    "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL;PRAGMA busy_timeout=30000;"
                ),
            },
            "TEST": {"NAME": DATA_DIR / "test.sqlite3"},
        }
    }

if REDIS_URL:
    # Progress and abuse counters in Redis, shared by every machine. Stored as JSON, not
    # Django's default pickle: write access to Redis must not be code execution here.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "TIMEOUT": 7 * 24 * 3600,
            "KEY_PREFIX": "quiltsite",
            "OPTIONS": {"serializer": "longtask.jsoncache.JSONSerializer"},
        }
    }
    # Workers push "task changed" events to the web processes' websockets. The layer
    # waits for a message with a blocking read that Redis ends after 5 s; redis-py 8
    # stops reading any socket after 5 s by default, which lost that race and killed the
    # read (channels_redis#422): the socket waits twice as long as the read.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 10}],
                "prefix": "quiltsite:channels",
            },
        }
    }
else:
    # Workers write progress and the web process reads it, so the cache must be shared
    # across processes: local-memory is not. The file-based cache needs no server,
    # writes each entry atomically (temp file + rename) and keeps progress off the
    # SQLite write lock that the task rows need. Without a channel layer, the web
    # process polls the database for the websockets it serves (longtask/live/watcher.py).
    # JSON files, not Django's pickles: write access to var/cache must not run code.
    CACHES = {
        "default": {
            "BACKEND": "longtask.jsoncache.JSONFileBasedCache",
            "LOCATION": DATA_DIR / "cache",
            "TIMEOUT": 7 * 24 * 3600,
            "OPTIONS": {"MAX_ENTRIES": 20_000},
        },
        # The anonymous visitors' limits apart from progress, where culling never reaches
        # them: a full cache must not let a visitor start more than the limits allow.
        "limits": {
            "BACKEND": "longtask.jsoncache.JSONFileBasedCache",
            "LOCATION": DATA_DIR / "limits",
            "TIMEOUT": 24 * 3600,
            "OPTIONS": {"MAX_ENTRIES": 1_000_000_000},
        },
    }
    LONGTASK_LIMITS_CACHE_ALIAS = "limits"
# Sessions in the database only (JSON, signed): never in the cache, so write access to
# the cache can neither run code nor forge a login.
SESSION_ENGINE = "django.contrib.sessions.backends.db"

# Absolute status URLs printed by `manage.py longtask` start with this.
LONGTASK_BASE_URL = os.environ.get(
    "LONGTASK_BASE_URL", f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
)


# Named queues: `default` runs tasks and splits fan-outs, `subtasks` runs subtasks;
# LONGTASK_QUEUES adds or changes queues (quiltsite/environment.py shows the syntax).
LONGTASK_QUEUES = queues_from_env(os.environ.get("LONGTASK_QUEUES", ""))
# django.tasks: a plain @task runs as a LongTask (status page, progress, recovery).
TASKS = {
    "default": {
        "BACKEND": "longtask.backends.LongTaskBackend",
        "QUEUES": sorted(LONGTASK_QUEUES),
    }
}
# The rate limits' moving windows: in Redis when there is one, else in the database.
LONGTASK_RATE_LIMIT_STORAGE = REDIS_URL or None
# This worker's name in the admin's `worker` column (default: host:pid).
LONGTASK_NODE = os.environ.get("LONGTASK_NODE") or None
WORKERS = int(LONGTASK_QUEUES["default"]["workers"])
LONGTASK_SUBTASK_PARALLELISM = int(LONGTASK_QUEUES["subtasks"]["workers"])
# Abuse limits of web and CLI starts (per user, or per client IP for anonymous visitors);
# staff are exempt. REMOTE_ADDR is the client IP: behind a proxy, set it from the proxy's
# header in a middleware of your own (X-Forwarded-For is never trusted by default).
LONGTASK_STARTS_PER_MINUTE = env_int("LONGTASK_STARTS_PER_MINUTE", 20)
LONGTASK_MAX_ACTIVE_TASKS = env_int("LONGTASK_MAX_ACTIVE_TASKS", 5)
LONGTASK_MAX_QUEUED_SUBTASKS = env_int("LONGTASK_MAX_QUEUED_SUBTASKS", 100_000)
# Chunk jobs of one fan-out in the broker at a time (unset: twice the subtask workers; 0:
# no window, every square queued at the split).
if os.environ.get("LONGTASK_FANOUT_WINDOW_JOBS"):
    LONGTASK_FANOUT_WINDOW_JOBS = env_int("LONGTASK_FANOUT_WINDOW_JOBS", 0)
# Seconds between a watched task's reads when nothing pushes its changes, and between
# its reads anyway when something does (longtask's defaults: 0.3 and 5).
if os.environ.get("LONGTASK_LIVE_INTERVAL"):
    LONGTASK_LIVE_INTERVAL = float(os.environ["LONGTASK_LIVE_INTERVAL"])
if os.environ.get("LONGTASK_LIVE_FALLBACK"):
    LONGTASK_LIVE_FALLBACK = float(os.environ["LONGTASK_LIVE_FALLBACK"])
# /metrics answers a scraper sending "Authorization: Bearer <this token>" (and staff
# sessions that may view all tasks); unset, no token gets in.
LONGTASK_METRICS_TOKEN = os.environ.get("LONGTASK_METRICS_TOKEN", "").strip() or None
# Crash recovery: a running task or subtask that has not beaten for STALE_AFTER
# seconds is re-queued (counted as a failed attempt) by `manage.py longtask_worker`.
LONGTASK_HEARTBEAT_INTERVAL = float(os.environ.get("LONGTASK_HEARTBEAT_INTERVAL", 5))
LONGTASK_STALE_AFTER = float(os.environ.get("LONGTASK_STALE_AFTER", 60))
LONGTASK_SWEEP_INTERVAL = float(os.environ.get("LONGTASK_SWEEP_INTERVAL", 10))
# `longtask_worker` restarts a cluster whose workers all idle this long while jobs wait.
LONGTASK_WEDGE_AFTER = float(os.environ.get("LONGTASK_WEDGE_AFTER", 10))
# The longest a single job may run before django-q2 kills it (seconds).
JOB_TIMEOUT = env_int("LONGTASK_JOB_TIMEOUT", 600)

# django-q2's defaults are unsafe for long jobs (docs/configuration.md, "Why these settings"):
Q_CLUSTER = {
    # The name is also the salt that signs jobs: the same on every machine of a site.
    "name": "longtask",
    "workers": WORKERS,
    # A job is killed after `timeout`; the broker re-delivers a job it has not
    # acknowledged `retry` seconds after it was *dequeued* (not started): a job may
    # first wait in the cluster's local queue (`queue_limit`) behind another one.
    # So retry > 2 x timeout, or a slow job would be delivered twice while it runs.
    # (A duplicate delivery is harmless anyway: a task is claimed by a conditional
    # UPDATE, and a subtask counts only once.)
    "timeout": JOB_TIMEOUT,
    "retry": 2 * JOB_TIMEOUT + 60,
    "queue_limit": WORKERS,
    # The default (0) re-runs a failing job forever. Longtask records failures on
    # its own rows, so a job that still raised is not re-run by django-q2...
    "max_attempts": 1,
    # ...and is removed from the queue rather than re-delivered after `retry`.
    "ack_failures": True,
    # Success rows are pickled results that longtask never reads: keep none. Fan-in
    # uses longtask's own counter, never django-q2 groups, so the default of 250
    # (which deletes rows and leaves a group of >250 short forever) cannot bite.
    "save_limit": -1,
    "catch_up": False,
    # django-q2 replaces a worker process after this many jobs (its default), which
    # bounds what a leaking task can hold; longtask_worker does not restart for it.
    "recycle": env_int("LONGTASK_WORKER_RECYCLE", 500),
    "poll": 0.1,
    "bulk": 4,
    "label": "Django Q",
    # `manage.py longtask_worker --queue NAME` runs `Q_CLUSTER_NAME=<its cluster>
    # manage.py qcluster`, which serves that queue with these overrides.
    "ALT_CLUSTERS": {
        str(queue["cluster"]): {
            "workers": int(queue["workers"]),
            "queue_limit": int(queue["workers"]),
        }
        for name, queue in LONGTASK_QUEUES.items()
        if name != "default"
    },
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL  # django-q2's Redis broker: a list per cluster...
    # ...plus delayed delivery for retry delays and rate limits (longtask/dispatch/redis.py).
    Q_CLUSTER["broker_class"] = "longtask.dispatch.redis.RedisBroker"
else:
    Q_CLUSTER["orm"] = "default"  # the ORM broker: the queue is a table in the same database
    # ...whose pusher takes each poll's jobs with one statement (longtask/dispatch/orm.py).
    Q_CLUSTER["broker_class"] = "longtask.dispatch.orm.OrmBroker"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"  # for `collectstatic` in deployments (made by apps.ready)
# WhiteNoise serves static files from the app directories under daphne, no DEBUG needed.
WHITENOISE_USE_FINDERS = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Sign-in for people at /accounts/ (quiltsite/urls.py); the first account is made with
# `python manage.py createsuperuser`.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "longtask:index"

# Failed sign-ins are limited by django-axes, on /accounts/login/ and the admin's login
# alike: AXES_FAILURE_LIMIT failures for one username (from any address), or from one
# client address (for any usernames), block signing in with that username, or from that
# address, for AXES_COOLOFF_TIME; each failure while blocked starts it again, and a
# correct password is refused meanwhile. A success clears nothing (no
# AXES_RESET_ON_SUCCESS): it would delete every failure from the same address, so an
# attacker with an account of their own could sign in between guesses at another's.
# Attempts are rows in the database (the admin lists them under "Axes"; `manage.py
# axes_reset` unblocks everyone). The client address is REMOTE_ADDR, as for the start
# limits: behind a proxy, set it from the proxy's header in a middleware of your own.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a blocked sign-in
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("DJANGO_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = datetime.timedelta(minutes=env_int("DJANGO_LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username"], ["ip_address"]]
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "longtask": {
            "handlers": ["console"],
            "level": os.environ.get("LONGTASK_LOG_LEVEL", "INFO"),
        },
        # Django's own lines for @task functions (started, finished: sent by the workers).
        "django.tasks": {
            "handlers": ["console"],
            "level": os.environ.get("LONGTASK_LOG_LEVEL", "INFO"),
        },
    },
}
