"""Services that write the domain: mail domains, their manual accesses, provisioning."""

from core.services.errors import AlreadyExistsError, InvalidDomainNameError, ServiceError
from core.services.maildomains import (
    create_maildomain,
    create_maildomain_access,
    delete_maildomain_access,
)
from core.services.provisioning import (
    INVALID_DOMAIN_NAME,
    ProvisioningError,
    ProvisioningResult,
    provision_maildomains,
)

__all__ = [
    "INVALID_DOMAIN_NAME",
    "AlreadyExistsError",
    "InvalidDomainNameError",
    "ProvisioningError",
    "ProvisioningResult",
    "ServiceError",
    "create_maildomain",
    "create_maildomain_access",
    "delete_maildomain_access",
    "provision_maildomains",
]
