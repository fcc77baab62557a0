"""Figure 9: how long the DeployCenter client takes over the largest malformed answers.

The test of the corpus (tests/entitlements/test_malformed_answers.py) asserts what each answer
is classified as and that its memory stays bounded, never a time: a loaded machine must not
fail a test. The times are measured here instead: a stub in this process serves each large
body over real HTTP, the real client reads and classifies it; the median of `repeat` asks.
"""

import statistics
import time

from core.entitlements.backends.deploycenter import DeployCenterEntitlementsBackend
from core.models import User
from tests.deploycenter_stub import ALPHA_SIRET, DeployCenterStub
from tests.entitlements.malformed_answers import CORPUS

# The account the corpus answers for; never saved: the client only reads its e-mail.
_EMAIL = "admin@alpha.example.org"


def bad_input_times(*, repeat: int) -> dict[str, float]:
    """Median ms to read and classify each large body of the corpus: bad_input_<id>_ms."""
    user = User(email=_EMAIL)
    figures = {}
    with DeployCenterStub() as stub:
        backend = DeployCenterEntitlementsBackend(**stub.backend_parameters())
        for case in (case for case in CORPUS if case.large):
            stub.answer_raw(
                case.body,
                status=case.status,
                content_type=case.content_type,
                headers=case.headers,
                chunked=case.chunked,
            )
            seconds = []
            for _ in range(repeat):
                started = time.perf_counter()
                backend.get_entitlements(user=user, forwarded_claims={"siret": ALPHA_SIRET})
                seconds.append(time.perf_counter() - started)
            name = case.id.replace("-", "_")
            figures[f"bad_input_{name}_ms"] = round(statistics.median(seconds) * 1000, 1)
    return figures
