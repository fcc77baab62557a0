"""The million-user benchmark's data (bench/million_data.py), loaded in SQL, is what a run
leaves behind: each user holds the access the bench stub answers at generation 0, with a
state recording that answer and the e-mail's identity. So the benchmark's run at generation 1
changes every user (one domain granted, one revoked) and holds none of it. 40 users here: the
benchmark's own sizes are for `python -m bench.million`."""

import re

from bench import million_data
from bench.stub import entitled_domains
from core.entitlements.identity import upstream_identity
from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, User
from tests.deploycenter_stub import ALPHA_SIRET
from tests.support.bench_database import bench_database, run_bench


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


def test_explain_only_prints_the_batch_plans_without_a_run():
    """`python -m bench.million --explain-only`, as an operator runs it before the hour-long
    run, on 200 users: it loads them, explains one batch's statements and the fan-out's query,
    and stops there."""
    with bench_database("bench_million") as url:
        completed = run_bench("bench.million", "--explain-only", "--users", "200", database_url=url)

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "loaded 200 users" in completed.stdout
    batch = re.search(
        r"batch of 100 users among 200: (\d+) statements, (\d+) planned, (\d+) with a plan growing",
        completed.stdout,
    )
    assert batch, completed.stdout
    statements, planned, growing = map(int, batch.groups())
    assert statements >= planned > 0
    assert growing == 0
    assert "the fan-out's query (one per run, streamed): " in completed.stdout
    assert "users/s" not in completed.stdout
