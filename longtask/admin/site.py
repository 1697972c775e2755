"""A link to the operations dashboard on the admin's index page.

The admin's own ``admin/index.html`` comes first in template lookup (``django.contrib.admin``
is listed before longtask), so the link comes by the default site's ``index_template``,
set only if the project has not chosen one.
"""

from django.contrib import admin

if admin.site.index_template is None:
    admin.site.index_template = "admin/longtask/index.html"
