from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

# Sign-in for people, not only staff: Django's own views, in the site's style. The
# password pages have templates of their own names: the admin renders the default
# ones (registration/password_change_form.html, ...), which must stay the admin's.
accounts = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path(
        "logout/",
        auth_views.LogoutView.as_view(template_name="registration/signed_out.html"),
        name="logout",
    ),
    path(
        "password_change/",
        auth_views.PasswordChangeView.as_view(template_name="registration/change_password.html"),
        name="password_change",
    ),
    path(
        "password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(
            template_name="registration/change_password_done.html"
        ),
        name="password_change_done",
    ),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include(accounts)),
    path("", include("longtask.urls")),
]
