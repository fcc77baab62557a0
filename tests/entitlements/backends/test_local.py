"""The local backend: everyone has access, admin domains come from settings or an edited file."""

import json
import os
import re

import pytest

from core.entitlements import sync_user_entitlements
from core.entitlements.backends.base import AnswerKind
from core.entitlements.backends.local import LocalEntitlementsBackend
from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, User

LOCAL_BACKEND = "core.entitlements.backends.local.LocalEntitlementsBackend"


def _domains(backend, email):
    answer = backend.get_entitlements(user=User(email=email), forwarded_claims={})
    assert answer.kind is AnswerKind.AUTHORITATIVE
    return answer.domains


def test_without_a_mapping_it_answers_no_information_not_an_empty_list():
    answer = LocalEntitlementsBackend().get_entitlements(
        user=User(email="someone@example.org"), forwarded_claims={}
    )

    assert (answer.kind, answer.error_code, answer.domains) == (
        AnswerKind.NO_INFORMATION,
        "no_mapping",
        (),
    )


def test_an_explicit_empty_map_is_a_mapping_that_grants_nothing():
    assert _domains(LocalEntitlementsBackend(admins_by_email={}), "someone@example.org") == ()


def test_a_lost_setting_keeps_every_access_through_a_sync(settings, db):
    """ENTITLEMENTS_BACKEND_PARAMETERS lost: the sync must not revoke what an earlier sync
    granted (per-user syncs are outside the blast-radius guard)."""
    settings.ENTITLEMENTS_BACKEND = LOCAL_BACKEND
    settings.ENTITLEMENTS_BACKEND_PARAMETERS = {}
    user = User.objects.create_user(email="admin@alpha.example.org")
    EntitlementSyncState.objects.create(user=user)
    MailDomainAccess.objects.create(
        user=user,
        maildomain=MailDomain.objects.create(name="alpha.example.org"),
        source=MailDomainAccess.Source.ENTITLEMENTS,
    )

    result = sync_user_entitlements(user_id=user.pk, trigger="login")

    assert (result.status, result.error_code, result.removed) == (
        "no_information",
        "no_mapping",
        [],
    )
    assert MailDomainAccess.objects.filter(user=user).count() == 1


def test_maps_by_email_and_by_email_domain_add_up():
    backend = LocalEntitlementsBackend(
        admins_by_email={"Admin@Alpha.example.org": ["beta.example.org"]},
        admins_by_email_domain={"ALPHA.example.org": ["Alpha.example.org."]},
    )

    assert _domains(backend, "Admin@alpha.EXAMPLE.org") == ("alpha.example.org", "beta.example.org")
    assert _domains(backend, "other@alpha.example.org") == ("alpha.example.org",)
    # The local part is compared as is, like DeployCenter does.
    assert _domains(backend, "admin@alpha.example.org") == ("alpha.example.org",)
    assert _domains(backend, "admin@gamma.example.org") == ()


def _write(path, mapping, *, mtime):
    path.write_text(json.dumps(mapping))
    os.utime(path, ns=(mtime, mtime))


def test_mapping_file_is_reread_when_it_changes(tmp_path):
    mapping_file = tmp_path / "entitlements.json"
    _write(mapping_file, {"admins_by_email": {"a@x.org": ["alpha.example.org"]}}, mtime=10**18)
    backend = LocalEntitlementsBackend(mapping_file=str(mapping_file))
    assert _domains(backend, "a@x.org") == ("alpha.example.org",)

    _write(mapping_file, {"admins_by_email": {"a@x.org": []}}, mtime=10**18 + 10**9)

    assert _domains(backend, "a@x.org") == ()


def test_broken_mapping_file_is_an_invalid_answer_not_a_revocation(tmp_path):
    mapping_file = tmp_path / "entitlements.json"
    _write(mapping_file, {"admins_by_email": {"a@x.org": ["alpha.example.org"]}}, mtime=10**18)
    backend = LocalEntitlementsBackend(mapping_file=str(mapping_file))
    mapping_file.write_text('{"admins_by_email": {')

    answer = backend.get_entitlements(user=User(email="a@x.org"), forwarded_claims={})

    assert (answer.kind, answer.error_code) == (AnswerKind.INVALID, "mapping_file_invalid")


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"admins_by_email": {"a@x.org": ["not a domain"]}}, "admins_by_email"),
        ({"admins_by_email": {"a@x.org": "alpha.example.org"}}, "list of domain names"),
        ({"admins_by_email_domain": ["x.org"]}, "admins_by_email_domain"),
        (
            {"mapping_file": "/tmp/x.json", "admins_by_email": {"a@x.org": []}},
            "not both",
        ),
        ({"mapping_file": "/nonexistent/entitlements.json"}, "cannot be read"),
    ],
    ids=str,
)
def test_bad_parameters_are_refused(parameters, message):
    with pytest.raises(ValueError, match=message) as raised:
        LocalEntitlementsBackend(**parameters)

    assert "a@x.org" not in str(raised.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"admins": {}}', "keys among"),
        # Where the error is placed depends on the Python (3.13 points at the comma itself).
        ('{\n  "admins_by_email": {},\n}', re.compile(r"\(line [23], column \d+\)")),
    ],
    ids=["unknown key", "trailing comma"],
)
def test_a_mapping_file_broken_at_start_is_an_invalid_answer(tmp_path, caplog, content, message):
    mapping_file = tmp_path / "entitlements.json"
    mapping_file.write_text(content)

    backend = LocalEntitlementsBackend(mapping_file=str(mapping_file))
    answer = backend.get_entitlements(user=User(email="a@x.org"), forwarded_claims={})

    assert (answer.kind, answer.error_code) == (AnswerKind.INVALID, "mapping_file_invalid")
    found = (
        message.search(caplog.text) if isinstance(message, re.Pattern) else message in caplog.text
    )
    assert found
