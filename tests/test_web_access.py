"""Who may use the labelling server, checked on request headers alone (no socket)."""

from email.message import Message

import pytest

from rlhf_control.web.access import authorize, check_bind
from rlhf_control.web.app import ApiError


def _headers(**fields):
    msg = Message()
    for k, v in fields.items():
        msg[k.replace("_", "-")] = v
    return msg


def _status(headers, query, token, port=8000):
    try:
        authorize(headers, query, token, port)
    except ApiError as exc:
        return exc.status
    return 200


def test_without_a_token_only_loopback_host_names_pass():
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000", "LOCALHOST:1"):
        assert authorize(_headers(Host=host), {}, None, 8000) == {}, host
    for host in ("evil.example:80", "127.0.0.2:8000", "", "[::2]:8000", "localhost.evil.example"):
        assert _status(_headers(Host=host), {}, None) == 403, host


def test_token_from_header_query_or_this_port_cookie():
    tok = "s3cret"
    assert authorize(_headers(Authorization=f"Bearer {tok}"), {}, tok, 8000) == {}
    # a token in the URL sets a cookie named for the port, which then suffices on its own
    set_cookie = authorize(_headers(), {"token": [tok]}, tok, 8000)["Set-Cookie"]
    assert set_cookie.startswith(f"rlhf_label_8000={tok};") and "HttpOnly" in set_cookie
    assert authorize(_headers(Cookie=f"a=1; rlhf_label_8000={tok}"), {}, tok, 8000) == {}
    assert _status(_headers(Cookie=f"rlhf_label_9000={tok}"), {}, tok, port=8000) == 401  # another server's
    assert _status(_headers(), {}, tok) == 401
    assert _status(_headers(Authorization="Bearer nope"), {"token": [tok]}, tok) == 403  # the header wins
    assert _status(_headers(), {"token": ["nope"]}, tok) == 403


def test_bind_check():
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "tok")
    with pytest.raises(ValueError, match="give a token"):
        check_bind("0.0.0.0", None)
    for bad in ("", "has space", "a;b", 'q"uote', "é"):
        with pytest.raises(ValueError, match="token is not allowed"):
            check_bind("127.0.0.1", bad)
