"""The million-user benchmark's data (bench/million_data.py), loaded in SQL, is what a run
leaves behind: each user holds the access the bench stub answers at generation 0, with a
state recording that answer and the e-mail's identity. So the benchmark's run at generation 1
changes every user (one domain granted, one revoked) and holds none of it. 40 users here: the
benchmark's own sizes are for `python -m bench.million`."""

from bench import million_data
from bench.stub import entitled_domains
from core.entitlements.identity import upstream_identity
from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, User
from tests.deploycenter_stub import ALPHA_SIRET


def test_the_loaded_users_hold_what_the_stub_answered_at_generation_zero(transactional_db):
    seconds = million_data.load(40)

    assert seconds > 0
    assert MailDomain.objects.count() == 1000
    assert User.objects.count() == 40
    for state in EntitlementSyncState.objects.select_related("user"):
        email = state.user.email
        answer = entitled_domains(email, generation=0)
        rights = MailDomainAccess.objects.filter(
            user=state.user,
            role=MailDomainAccess.Role.ADMIN,
            source=MailDomainAccess.Source.ENTITLEMENTS,
        ).values_list("maildomain__name", flat=True)
        assert answer and list(rights) == answer == state.entitled_domains
        assert entitled_domains(email, generation=1) != answer
        assert state.status == EntitlementSyncState.Status.OK
        assert state.forwarded_claims == {"siret": ALPHA_SIRET}
        assert state.upstream_identity == upstream_identity(email)
