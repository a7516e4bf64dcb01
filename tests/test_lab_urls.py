"""lab/urls.py: the one setting, checked before use and masked before it is printed."""

from __future__ import annotations

from lab.urls import BadUrl, check_url, mask_url, redact

import pytest


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://user:pw@127.0.0.1:6379/0", "redis://***:***@127.0.0.1:6379/0"),  # the whole user part
    ("redis://secretpw@127.0.0.1:1/0", "redis://***@127.0.0.1:1/0"),  # a password where the user name goes
    ("redis://user:@127.0.0.1/0", "redis://***:@127.0.0.1/0"),
    ("redis://:pw@[::1]:6379/0", "redis://:***@[::1]:6379/0"),  # the brackets of an IPv6 address stay
    ("redis://secretpw@[::1]:6379/0", "redis://***@[::1]:6379/0"),
    ("redis://user:pw@[fe80::1%25eth0]:6379/0", "redis://***:***@[fe80::1%25eth0]:6379/0"),
    ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),  # an "@" in the password: the last one ends it
    ("redis://127.0.0.1:6379/0?password=pw", "redis://127.0.0.1:6379/0?password=***"),
    ("redis://h/0?socket_timeout=1&Password=pw&db=2", "redis://h/0?socket_timeout=1&Password=***&db=2"),
    ("redis://h/0?username=secretpw", "redis://h/0?username=***"),  # redis-py reads it as the user part
    ("redis://:pw@[::1", "redis://:***@[::1"),  # even a URL that urllib refuses
    ("redis://secretpw@[::1", "redis://***@[::1"),
    ("rediss://secretpw@host:6380", "rediss://***@host:6380"),
    ("unix://secretpw@/tmp/redis.sock?db=1", "unix://***@/tmp/redis.sock?db=1"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("memory://", "memory://"),
])
def test_mask_url_hides_the_whole_user_part_and_the_query_credentials_and_keeps_the_rest(url, masked):
    assert mask_url(url) == masked


@pytest.mark.parametrize("url", ["redis://secretpw@127.0.0.1:1/0", "redis://secretpw@[::1]:1/0",
                                 "redis://secretpw@[::1", "redis://u:secretpw@h/0", "redis://:secretpw@h/0",
                                 "redis://h/0?password=secretpw"])
def test_no_form_of_a_url_lets_its_secret_through_mask_or_redact(url):
    # Given a line that quotes the URL and the secret (a Redis error can echo what AUTH sent)
    line = f"cannot reach Redis at {url}: AUTH secretpw failed"
    # then neither the masked URL nor the redacted line shows it
    assert "secretpw" not in mask_url(url) and "secretpw" not in redact(line, url)


def test_redact_keeps_a_user_name_that_has_a_password_after_it():
    # A user name is not a secret when a password follows it: "default" stays a word
    url = "redis://default:pw@h/0"
    assert redact("the default user refused pw", url) == "the default user refused ***"


def test_redact_removes_a_password_from_any_text_that_quotes_it():
    url = "redis://:s3cr%40t@h/0?password=other"
    assert redact(f"failed on {url}: s3cr@t and s3cr%40t and other", url) == (
        "failed on redis://:***@h/0?password=***: *** and *** and ***")


@pytest.mark.parametrize(("url", "says"), [
    ("redis://[::1", "Invalid IPv6 URL"),
    ("redis://h:99999/0", "Port out of range 0-65535"),
    ("redis://h:abc/0", "Port could not be cast to integer value as 'abc'"),
    ("redis://h/abc", "the database 'abc' is not a number"),
    ("http://h/", "it must start with redis://, rediss://, unix://, amqp:// or amqps://"),
    ("localhost:6379", "it must start with redis://"),
    ("redis://h/0?db=x", "Invalid value for 'db' in connection URL."),
])
def test_check_url_refuses_what_redis_py_would_refuse_later_or_get_wrong(url, says):
    with pytest.raises(BadUrl, match=says.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")) as refused:
        check_url(url)
    assert refused.value.url == url


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "redis://h", "redis://h/", "rediss://:pw@h:6380/15",
                                 "unix:///tmp/redis.sock?db=1", "memory://"])
def test_check_url_accepts_the_urls_redis_py_accepts(url):
    assert check_url(url) == url
