import logging
from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from core.accounts.models import User
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

REGISTER = "/api/v1/users/register/"
LOGIN = "/api/v1/users/login/"
LOGOUT = "/api/v1/users/logout/"
TEMPLATES = "/api/v1/emails/email-template/"
STRONG = "quiet-meadow-Lantern-42"


def register(client, **overrides):
    body = {"email": "Ann@Example.com", "username": "ann", "password": STRONG} | overrides
    return client.post(REGISTER, body, format="json")


def login(client, email, password):
    return client.post(LOGIN, {"username": email, "password": password}, format="json")


def test_register_answers_email_and_username_without_the_password(api_client):
    response = register(api_client)
    assert response.status_code == 201
    assert response.json() == {"email": "ann@example.com", "username": "ann"}
    user = User.objects.get(username="ann")
    assert user.check_password(STRONG)
    assert STRONG not in response.content.decode()


def test_duplicate_email_is_refused_case_insensitively(api_client):
    register(api_client)
    response = register(api_client, email="ANN@example.COM", username="other")
    assert response.status_code == 400
    assert "email" in response.json()["errors"]
    assert User.objects.count() == 1


def test_duplicate_username_is_refused(api_client):
    register(api_client)
    response = register(api_client, email="other@example.com")
    assert response.status_code == 400
    assert "username" in response.json()["errors"]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"email": "not-an-email"}, "email"),
        ({"password": "123"}, "password"),
        ({"password": "password"}, "password"),
        ({"password": "ann@example.com1"}, "password"),
    ],
)
def test_invalid_registration_names_the_field(api_client, overrides, field):
    response = register(api_client, **overrides)
    assert response.status_code == 400
    body = response.json()
    assert field in body["errors"], body
    assert body["message"]
    assert not User.objects.exists()


@pytest.mark.parametrize("missing", ["email", "username", "password"])
def test_missing_field_is_named(api_client, missing):
    body = {"email": "ann@example.com", "username": "ann", "password": STRONG}
    del body[missing]
    response = api_client.post(REGISTER, body, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][missing] == ["This field is required."]


def test_password_is_never_logged(api_client, caplog):
    caplog.set_level(logging.DEBUG)
    register(api_client)
    login(api_client, "ann@example.com", STRONG)
    login(api_client, "ann@example.com", STRONG + "x")
    assert STRONG not in caplog.text


def test_login_answers_email_and_a_token_that_authenticates(api_client, user):
    response = login(api_client, user.email.upper(), PASSWORD)
    assert response.status_code == 200
    body = response.json()
    assert body["email"] == user.email
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {body['token']}")
    assert api_client.post(TEMPLATES, {}, format="json").status_code == 403  # known, not staff


def test_token_is_stored_hashed(api_client, user):
    token = login(api_client, user.email, PASSWORD).json()["token"]
    stored = AuthToken.objects.get(user=user)
    assert stored.digest != token and token not in stored.digest
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM knox_authtoken")
        rows = cursor.fetchall()
    assert not any(token in str(value) for row in rows for value in row)


def test_wrong_credentials_give_400_without_token(api_client, user):
    response = login(api_client, user.email, "wrong password")
    assert response.status_code == 400
    assert "token" not in response.json()
    assert login(api_client, "nobody@example.com", PASSWORD).status_code == 400


@override_settings(LOGIN_FAILURE_LIMIT=3)
def test_repeated_failures_are_throttled(api_client, user):
    for _ in range(2):
        assert login(api_client, user.email, "wrong").status_code == 400
    assert login(api_client, user.email.upper(), "wrong").status_code == 429  # the third: locked out
    throttled = login(api_client, user.email, PASSWORD)  # even the right password now
    assert throttled.status_code == 429
    assert int(throttled["Retry-After"]) > 0
    assert "token" not in throttled.json()


@override_settings(LOGIN_FAILURE_LIMIT=3, TRUSTED_PROXY_HOPS=1)
def test_behind_the_gateway_one_clients_failures_do_not_lock_out_another(api_client, user):
    # The gateway connects from one address for everybody; it appends each client's own to
    # X-Forwarded-For. What a client wrote there itself (left of it) is not believed.
    def attempt(password, forwarded):
        return api_client.post(
            LOGIN,
            {"username": user.email, "password": password},
            format="json",
            REMOTE_ADDR="10.0.0.1",
            HTTP_X_FORWARDED_FOR=forwarded,
        )

    for n in range(2):
        assert attempt("wrong", f"192.0.2.{n}, 198.51.100.7").status_code == 400  # posing as others
    assert attempt("wrong", "192.0.2.9, 198.51.100.7").status_code == 429
    assert attempt(PASSWORD, "198.51.100.7").status_code == 429
    assert attempt(PASSWORD, "203.0.113.9").status_code == 200


@override_settings(TRUSTED_PROXY_HOPS=0)
def test_without_a_trusted_proxy_x_forwarded_for_is_ignored(rf):
    from core.middleware import client_address

    request = rf.get("/", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert client_address(request) == "192.0.2.1"
    with override_settings(TRUSTED_PROXY_HOPS=1):
        assert client_address(request) == "203.0.113.9"
        assert (
            client_address(rf.get("/", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="not an address")) == "192.0.2.1"
        )
        assert client_address(rf.get("/", REMOTE_ADDR="192.0.2.1")) == "192.0.2.1"
    with override_settings(TRUSTED_PROXY_HOPS=2):
        assert (
            client_address(rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9, 10.0.0.2"))
            == "203.0.113.9"
        )


@override_settings(LOGIN_FAILURE_LIMIT=3, LOGIN_FAILURE_WINDOW_SECONDS=1)
def test_the_lockout_ends_when_the_window_has_passed_and_a_success_clears_the_count(api_client, user):
    import time

    for _ in range(3):
        login(api_client, user.email, "wrong")
    assert login(api_client, user.email, PASSWORD).status_code == 429
    time.sleep(1.2)
    assert login(api_client, user.email, PASSWORD).status_code == 200  # the window passed
    for _ in range(2):
        assert login(api_client, user.email, "wrong").status_code == 400  # counting from 0 again


@override_settings(LOGIN_FAILURE_LIMIT=3)
def test_the_admin_login_is_throttled_too(client, user):
    for _ in range(2):
        assert client.post("/admin/login/", {"username": user.email, "password": "wrong"}).status_code == 200
    locked = client.post("/admin/login/", {"username": user.email, "password": "wrong"})
    assert locked.status_code == 429 and locked.json()["message"] == "Too many failed logins. Try again later."
    user.is_staff = True
    user.save()
    assert client.post("/admin/login/", {"username": user.email, "password": PASSWORD}).status_code == 429


@pytest.mark.django_db(transaction=True)
@override_settings(LOGIN_FAILURE_LIMIT=1000)
def test_failures_are_counted_atomically_under_concurrency(user):
    from concurrent.futures import ThreadPoolExecutor

    from axes.models import AccessAttempt
    from django.db import connections

    def fail(_):
        try:
            return login(APIClient(), user.email, "wrong").status_code
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(fail, range(40))) == {400}
    assert AccessAttempt.objects.get().failures_since_start == 40  # none lost to a race


def test_registration_can_be_closed(api_client, settings):
    settings.REGISTRATION_OPEN = False
    response = register(api_client)
    assert response.status_code == 403 and response.json()["message"] == "Registration is closed."
    assert not User.objects.exists()


def test_registration_is_throttled_per_client_address(api_client, settings):
    settings.REGISTRATION_RATE_LIMIT = "2/hour"
    settings.TRUSTED_PROXY_HOPS = 1
    for n in range(2):
        assert (
            api_client.post(
                REGISTER,
                {"email": f"u{n}@example.com", "username": f"u{n}", "password": PASSWORD},
                format="json",
                HTTP_X_FORWARDED_FOR="198.51.100.7",
            ).status_code
            == 201
        )
    throttled = api_client.post(
        REGISTER,
        {"email": "u9@example.com", "username": "u9", "password": PASSWORD},
        format="json",
        HTTP_X_FORWARDED_FOR="198.51.100.7",
    )
    assert throttled.status_code == 429 and int(throttled["Retry-After"]) > 0
    assert (
        api_client.post(
            REGISTER,
            {"email": "v1@example.com", "username": "v1", "password": PASSWORD},
            format="json",
            HTTP_X_FORWARDED_FOR="203.0.113.9",
        ).status_code
        == 201
    )
    assert User.objects.count() == 3


def test_logout_revokes_the_token(api_client, user):
    token = login(api_client, user.email, PASSWORD).json()["token"]
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api_client.post(LOGOUT).status_code == 204
    assert api_client.post(LOGOUT).status_code == 401
    assert not AuthToken.objects.filter(user=user).exists()


def test_expired_token_is_refused(api_client, user):
    token = login(api_client, user.email, PASSWORD).json()["token"]
    AuthToken.objects.filter(user=user).update(expiry=timezone.now() - timedelta(seconds=1))
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api_client.post(LOGOUT).status_code == 401


def test_token_of_a_deactivated_user_is_refused(api_client, user):
    token = login(api_client, user.email, PASSWORD).json()["token"]
    User.objects.filter(pk=user.pk).update(is_active=False)
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    response = api_client.get(TEMPLATES)
    assert response.status_code == 401
    assert response.json()["message"] == "User inactive or deleted."


def test_a_token_matching_only_the_stored_key_prefix_is_refused(api_client, user):
    # The prefix finds the row; only the digest of the whole key may let it in.
    token = login(api_client, user.email, PASSWORD).json()["token"]
    forged = token[:8] + ("0" if token[8] != "0" else "1") + token[9:]
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {forged}")
    assert api_client.get(TEMPLATES).status_code == 401
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    answer = api_client.get(TEMPLATES)
    assert answer.status_code == 200


def test_token_lifetime_comes_from_settings(api_client, user):
    before = timezone.now()
    login(api_client, user.email, PASSWORD)
    after = timezone.now()
    expiry = AuthToken.objects.get(user=user).expiry
    assert before + timedelta(days=7) <= expiry <= after + timedelta(days=7)


def test_garbage_token_is_refused(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = api_client.post(LOGOUT)
    assert response.status_code == 401
    assert response.json()["message"] == "Invalid token."


def test_expired_tokens_are_purged(user):
    from core.accounts.services import token_purge_expired

    AuthToken.objects.create(user=user, expiry=timedelta(seconds=-1))
    AuthToken.objects.create(user=user)
    assert token_purge_expired() == 1
    assert AuthToken.objects.filter(user=user).count() == 1


def test_expired_token_purge_is_scheduled():
    from django.utils.module_loading import import_string
    from django_q.models import Schedule

    job = Schedule.objects.get(name="token_purge_expired")
    assert job.schedule_type == Schedule.HOURLY and job.repeats < 0
    assert import_string(job.func)() == 0
